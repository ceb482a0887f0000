"""A RAFT run from start to report: evaluate, train, evaluate, and write `summary.json` and `reward_curve.png`."""

import json
import os
import time
from collections.abc import Callable

from datasets import Dataset

from .evaluation import evaluate_policy
from .files import atomic_path
from .raft_trainer import RAFTTrainer


def train_and_report(
    trainer: RAFTTrainer,
    eval_prompts: Dataset,
    eval_chosen: Dataset | None = None,
    true_score: Callable[[str, str], float] | None = None,
) -> dict:
    """Evaluate the policy on held-out prompts, run RAFT, evaluate again, save the model, and write in
    `output_dir`: `summary.json` (per-stage metrics and the before/after evaluations, the columns of the paper's
    Table 3) and `reward_curve.png` (the paper's Figure 1, left). Returns the summary."""
    output_dir = trainer.args.output_dir
    start = time.time()
    before = evaluate_policy(trainer, eval_prompts, eval_chosen, true_score, seed=trainer.args.seed)
    trainer.train()
    after = evaluate_policy(trainer, eval_prompts, eval_chosen, true_score, seed=trainer.args.seed)
    trainer.save_model()
    summary = {
        "stages": stage_records(trainer),
        "eval": {"before": before, "after": after},
        "wall_seconds": time.time() - start,
    }
    if trainer.is_world_process_zero():
        with atomic_path(os.path.join(output_dir, "summary.json")) as partial, open(partial, "w") as file:
            json.dump(summary, file, indent=2)
        plot_reward_curve(summary["stages"], os.path.join(output_dir, "reward_curve.png"))
    return summary


def stage_records(trainer: RAFTTrainer) -> list[dict]:
    """The per-stage log records of a finished run, with the Trainer's bookkeeping keys left out."""
    bookkeeping = {"epoch", "step", "grad_norm", "learning_rate"}
    return [
        {key: value for key, value in record.items() if key not in bookkeeping}
        for record in trainer.state.log_history
        if "stage" in record
    ]


def plot_reward_curve(stages: list[dict], path: str) -> None:
    """Mean reward of the policy and of the kept best-of-K set per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    numbers = [record["stage"] for record in stages]
    axes.plot(numbers, [record["reward_mean"] for record in stages], marker="o", label="policy (all candidates)")
    axes.plot(numbers, [record["reward_kept_mean"] for record in stages], marker="s", label="kept (best of K)")
    axes.set_xlabel("stage")
    axes.set_ylabel("mean reward")
    axes.set_title("RAFT reward per stage")
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=120)
    plt.close(figure)
