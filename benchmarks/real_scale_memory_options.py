"""RAFT's memory options at real scale, each against TRL's PPO peak in the same run: SmolLM2-135M-Instruct as policy,
a reward model of its size (`real_scale_memory.py` makes it: the policy's weights with an untrained score head).

Each configuration is one RAFT stage (16 arithmetic prompts x 8 completions of at most 16 tokens, 2 optimizer steps of
8 samples with AdamW) in a process of its own; PPO gets 32 episodes of the same prompts (one update: policy, its
reference copy, value model and reward model, with the value model's optimizer). Reported per configuration: the
process's peak memory, its baseline after the imports, and RAFT's per-phase peaks (`memory/<phase>_peak_mb`): the
phases are decoupled, so the run's peak is that of its largest phase, not the sum of what every phase holds.
On CPU: peak resident set (the kernel's high-water mark); on a GPU: peak allocated CUDA memory.

    python benchmarks/real_scale_memory_options.py --output_dir runs/memory-options   # about 6 minutes on 2 cores
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIGURATIONS = {
    "full fine-tuning": {},
    "LoRA (r=16, attention and MLP projections)": {"lora": True},
    "gradient checkpointing": {"gradient_checkpointing": True},
    "offload_inactive_models": {"offload": True},
    "LoRA + gradient checkpointing": {"lora": True, "gradient_checkpointing": True},
    "TRL PPO (policy, reference, value, reward)": {"ppo": True},
}


def raft_worker(configuration: dict, policy: str, reward_model: str, output_dir: str) -> dict:
    import torch
    from peft import LoraConfig

    from raft_trainer import RAFTConfig, RAFTTrainer
    from raft_trainer.memory import process_peak_mb, resident_memory_mb
    from raft_trainer.reporting.console import quiet_dependencies
    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    quiet_dependencies()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    baseline = resident_memory_mb() if device == "cpu" else 0.0
    start = time.perf_counter()
    args = RAFTConfig(
        output_dir=output_dir,
        num_stages=1,
        prompts_per_stage=16,
        num_generations=8,
        max_completion_length=16,
        per_device_train_batch_size=8,
        epochs_per_stage=1,
        learning_rate=1e-5,
        gradient_checkpointing=configuration.get("gradient_checkpointing", False),
        offload_inactive_models=configuration.get("offload", False),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = None
    if configuration.get("lora"):
        projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=projections, task_type="CAUSAL_LM")
    prompts = arithmetic_dataset("sums", num_train=256)["train"].select_columns(["prompt"])
    trainer = RAFTTrainer(policy, reward_model, args=args, train_dataset=prompts, peft_config=peft_config)
    trainer.train()
    record = next(record for record in trainer.state.log_history if "stage" in record)
    phases = {phase: record.get(f"memory/{phase}_peak_mb") for phase in ("generate", "score", "train")}
    seconds = time.perf_counter() - start
    return {"peak": process_peak_mb(device), "baseline": baseline, "phases": phases, "seconds": seconds}


def ppo_worker(policy: str, reward_model: str, output_dir: str) -> dict:
    """TRL's PPO on 32 episodes, built as raft-compare builds it (`compare/methods.py`)."""
    import torch

    from raft_trainer.compare.methods import Run, train_ppo
    from raft_trainer.compare.progress import RewardCurve, Stopwatch
    from raft_trainer.compare.settings import CompareArguments
    from raft_trainer.compare.task import ComparisonTask
    from raft_trainer.memory import process_peak_mb, resident_memory_mb
    from raft_trainer.reporting.console import quiet_dependencies
    from raft_trainer.rewards import RewardModel
    from raft_trainer.sequences import load_tokenizer
    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    quiet_dependencies()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    baseline = resident_memory_mb() if device == "cpu" else 0.0
    start = time.perf_counter()
    prompts = arithmetic_dataset("sums", num_train=256)["train"].select_columns(["prompt"])
    settings = CompareArguments(
        num_stages=1, prompts_per_stage=4, num_generations=8, completions_per_update=32,
        per_device_train_batch_size=8, max_completion_length=16, temperature=1.0,
    )  # fmt: skip
    task = ComparisonTask(policy, reward_model, prompts, prompts, None, prompts, None, None)
    run = Run("ppo", "ppo", 1e-5, settings, task, output_dir)
    curve = RewardCurve(lambda model: {}, settings.completions_per_checkpoint, Stopwatch())  # no evaluation
    reward = RewardModel.from_pretrained(reward_model, show_progress=False).to(device)
    train_ppo(run, load_tokenizer(policy), reward, curve)
    seconds = time.perf_counter() - start
    return {"peak": process_peak_mb(device), "baseline": baseline, "phases": {}, "seconds": seconds}


def table(results: dict) -> str:
    ppo = results.get("TRL PPO (policy, reference, value, reward)", {}).get("peak")
    lines = [
        "| configuration | peak (MB) | over baseline (MB) | generate / score / train peak (MB) | x PPO's peak "
        "| time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        phases = " / ".join(f"{r['phases'][p]:.0f}" for p in ("generate", "score", "train")) if r["phases"] else "–"
        ratio = f"x{r['peak'] / ppo:.2f}" if ppo else "–"
        lines.append(
            f"| {name} | {r['peak']:.0f} | {r['peak'] - r['baseline']:.0f} | {phases} | {ratio} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/memory-options")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a configuration's name: run it, print its figures
    options = parser.parse_args()
    sys.path.insert(0, ROOT)
    from real_scale_memory import make_reward_model

    from raft_trainer.models import packaged_smollm2

    policy = packaged_smollm2()
    reward_model = make_reward_model(policy, os.path.join(options.output_dir, "reward_model"))
    if options.worker is not None:
        configuration = CONFIGURATIONS[options.worker]
        out = os.path.join(options.output_dir, "runs", str(list(CONFIGURATIONS).index(options.worker)))
        if configuration.get("ppo"):
            result = ppo_worker(policy, reward_model, out)
        else:
            result = raft_worker(configuration, policy, reward_model, out)
        print(json.dumps(result))
        return
    results = {}
    for name in CONFIGURATIONS:
        command = [sys.executable, __file__, "--output_dir", options.output_dir, "--worker", name]
        output = subprocess.run(command, capture_output=True, text=True)
        if output.returncode != 0:
            print(f"{name} failed:\n{output.stderr[-2000:]}", flush=True)
            continue
        results[name] = json.loads(output.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    text = table(results)
    with open(os.path.join(options.output_dir, "results.md"), "w", encoding="utf-8") as file:
        file.write(text)
    print(text)


if __name__ == "__main__":
    main()
