"""RAFT, RAFT++ and Reinforce-Rej against TRL's GRPO on the real model and the arithmetic task, at equal completions.

Each run is its own process (`examples/llm/raft_arithmetic.py` for the RAFT family, TRL's `GRPOTrainer` for GRPO),
from the same SmolLM2-135M-Instruct, on the same training prompts, with the same reward (the exact final number),
the same number of generated completions, learning rate and completion length. Held-out accuracy (100 fixed test
problems, one completion each sampled at temperature 1) is recorded along the way, greedy accuracy before and after.

    python benchmarks/raft_family.py --seeds 0 1 2 --output_dir runs/family        # about 45 minutes on 2 cores
    python benchmarks/raft_family.py --methods raft raft_best_of_k --seeds 0 1 2   # the selection ablation
    python benchmarks/raft_family.py --methods raft_2_epochs raft_lr_2e-5 --seeds 0  # what else was tried

Writes `results.json`, `results.md` and `accuracy.png` (accuracy against completions and against wall time, and
the sampling entropy per stage) in `--output_dir`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "llm", "raft_arithmetic.py")
# The setting this benchmark measures, pinned (the example's defaults moved to small stages since): 3 stages of 32
# prompts x 8 samples = 768 completions of at most 16 tokens, plain RAFT, one pass of 48 samples a stage, lr 1e-5.
BIG_STAGES = ["--num_stages", "3", "--prompts_per_stage", "32", "--learning_rate", "1e-5", "--loss_type", "raft"]
BIG_STAGES += ["--samples_per_stage", "48", "--max_empty_stages", "3"]
# The RAFT family: flags on top of that setting.
FAMILY = {
    "raft": [],
    "raft_best_of_k": ["--best_of_k", "true"],
    "raft++": ["--loss_type", "raft++"],
    "reinforce_rej": ["--loss_type", "reinforce_rej", "--kept_per_prompt", "1", "--samples_per_stage", "128"],
    # What else was tried for plain RAFT: two passes over each stage's kept set, a learning rate twice as high.
    "raft_2_epochs": ["--epochs_per_stage", "2"],
    "raft_lr_2e-5": ["--learning_rate", "2e-5"],
}
METHODS = [*FAMILY, "grpo"]


def run_family(method: str, seed: int, output_dir: str) -> dict:
    out = os.path.join(output_dir, method, f"seed{seed}")
    command = [sys.executable, EXAMPLE, "--output_dir", out, "--seed", str(seed), "--log_entropy", "true"]
    command += ["--num_stage_eval_prompts", "50"]  # the curve: 50 held-out prompts after every stage
    start = time.perf_counter()
    subprocess.run(command + BIG_STAGES + FAMILY[method], check=True)
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as file:
        summary = json.load(file)
    completions = 32 * 8
    return {
        "method": method,
        "seed": seed,
        "greedy_before": summary["before"]["greedy_accuracy"],
        "greedy_after": summary["after"]["greedy_accuracy"],
        "sampled_after": summary["after"]["sampled_accuracy"],
        "curve": [
            {"completions": (s["stage"] + 1) * completions, "accuracy": s["eval_reward"]} for s in summary["stages"]
        ],
        "entropy": [s.get("entropy") for s in summary["stages"]],
        "seconds": time.perf_counter() - start,
        "train_seconds": summary["seconds"],
        "peak_rss_mb": summary["peak_rss_mb"],
    }


def grpo_worker(seed: int, out: str) -> None:
    """TRL's GRPO on the same budget: 24 steps of 32 completions (4 prompts x 8), beta 0, lr 1e-5, followed on 50
    held-out problems every 8 steps (one completion each, as the RAFT runs after every stage)."""
    from trl import GRPOConfig, GRPOTrainer

    from raft_trainer.memory import process_peak_mb
    from raft_trainer.models import SMOLLM2, resolve_model_name
    from raft_trainer.reporting.console import quiet_dependencies
    from raft_trainer.rewards.rules import exact_answer_reward
    from raft_trainer.tasks.accuracy import evaluate_accuracy
    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    quiet_dependencies()
    start = time.perf_counter()
    data = arithmetic_dataset("sums", num_train=256, seed=seed)
    args = GRPOConfig(
        output_dir=out,
        seed=seed,
        learning_rate=1e-5,
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=16,
        temperature=1.0,
        beta=0.0,
        bf16=False,  # TRL's GRPOConfig defaults to bf16, which the CPU does not run
        max_steps=24,
        eval_strategy="steps",
        eval_steps=8,
        per_device_eval_batch_size=32,
        num_generations_eval=1,
        logging_steps=8,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=resolve_model_name(SMOLLM2),
        reward_funcs=exact_answer_reward,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"].select(range(50)),  # the 50 the RAFT runs are followed on
    )
    evaluate = {"temperature": 1.0, "num_samples": 2, "max_new_tokens": 16, "seed": seed}
    before = evaluate_accuracy(trainer.model, trainer.processing_class, data["test"], **evaluate)
    trainer.train()
    after = evaluate_accuracy(trainer.model, trainer.processing_class, data["test"], **evaluate)
    evals = [record for record in trainer.state.log_history if "eval_reward" in record]
    result = {
        "method": "grpo",
        "seed": seed,
        "greedy_before": before["greedy_accuracy"],
        "greedy_after": after["greedy_accuracy"],
        "sampled_after": after["sampled_accuracy"],
        "curve": [{"completions": r["step"] * 32, "accuracy": r["eval_reward"]} for r in evals],
        "entropy": [r.get("entropy") for r in trainer.state.log_history if "entropy" in r and "eval_reward" not in r],
        "train_seconds": time.perf_counter() - start,
        "peak_rss_mb": process_peak_mb("cpu"),  # measured as for the RAFT runs
    }
    with open(os.path.join(out, "result.json"), "w", encoding="utf-8") as file:
        json.dump(result, file)


def run_grpo(seed: int, output_dir: str) -> dict:
    out = os.path.join(output_dir, "grpo", f"seed{seed}")
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--grpo_worker", str(seed), "--output_dir", out], check=True)
    with open(os.path.join(out, "result.json"), encoding="utf-8") as file:
        return {**json.load(file), "seconds": time.perf_counter() - start}


def table(results: list[dict]) -> str:
    lines = [
        "| method | seed | greedy before | greedy after | sampled after | wall time (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['greedy_before']:.2f} | {r['greedy_after']:.2f} | "
            f"{r['sampled_after']:.2f} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    by_method = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    lines += [
        "",
        "| method | seeds | greedy after (mean, min-max) | gain | wall time (s, mean) |",
        "|---|---|---|---|---|",
    ]
    for method, runs in by_method.items():
        after = [r["greedy_after"] for r in runs]
        gain = sum(r["greedy_after"] - r["greedy_before"] for r in runs) / len(runs)
        seconds = sum(r["seconds"] for r in runs) / len(runs)
        lines.append(
            f"| {method} | {len(runs)} | {sum(after) / len(after):.3f} ({min(after):.2f}-{max(after):.2f}) | "
            f"{gain:+.3f} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = {method: f"C{i}" for i, method in enumerate(METHODS)}
    for r in results:
        label = r["method"] if r["seed"] == min(x["seed"] for x in results if x["method"] == r["method"]) else None
        completions = [0] + [point["completions"] for point in r["curve"]]
        accuracy = [r["greedy_before"]] + [point["accuracy"] for point in r["curve"]]
        seconds = [0] + [r["seconds"] * c / completions[-1] for c in completions[1:]]
        axes[0].plot(completions, accuracy, "o-", color=colors[r["method"]], label=label, alpha=0.8)
        axes[1].plot(seconds, accuracy, "o-", color=colors[r["method"]], label=label, alpha=0.8)
        entropy = [value for value in r["entropy"] if value is not None]
        if entropy:
            axes[2].plot(range(1, len(entropy) + 1), entropy, "o-", color=colors[r["method"]], label=label)
    axes[0].set(xlabel="completions generated", ylabel="held-out accuracy (sampled; 0: greedy)")
    axes[1].set(xlabel="wall time (s, stages spread evenly)", ylabel="held-out accuracy")
    axes[2].set(xlabel="stage", ylabel="sampling entropy (nats/token)")
    for axis in axes:
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["raft", "raft++", "reinforce_rej", "grpo"], choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output_dir", default="runs/family")
    parser.add_argument("--grpo_worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpo_worker is not None:
        grpo_worker(args.grpo_worker, args.output_dir)
        return
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "results.json")
    results = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else []
    for seed in args.seeds:
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in results):
                continue  # measured already: a rerun goes on where it stopped
            try:
                result = (
                    run_grpo(seed, args.output_dir) if method == "grpo" else run_family(method, seed, args.output_dir)
                )
            except subprocess.CalledProcessError as error:  # one method failing does not stop the others
                print(f"{method} seed {seed} failed: {error}", flush=True)
                continue
            results.append(result)
            with open(path, "w", encoding="utf-8") as file:
                json.dump(results, file, indent=1)
            print(table([result]).splitlines()[2], flush=True)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as file:
        file.write(table(results))
    plot(results, os.path.join(args.output_dir, "accuracy.png"))
    print(table(results))


if __name__ == "__main__":
    main()
