"""A RAFT run from start to report: evaluate, train, evaluate, and write `summary.json` and `reward_curve.png`."""

import os
import time
from collections.abc import Callable

from datasets import Dataset

from ..evaluation import evaluate_policy
from ..files import write_json
from .run_log import plot_reward_curve, stage_records


def train_and_report(
    trainer,  # a RAFTTrainer (reporting sits below the trainers: it imports none)
    eval_prompts: Dataset,
    eval_chosen: Dataset | None = None,
    true_score: Callable[[str, str], float] | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> dict:
    """Evaluate the policy on held-out prompts, run RAFT (resumed as `Trainer.train` resumes with
    `resume_from_checkpoint`), evaluate again, save the model, and write in
    `output_dir`: `summary.json` (per-stage metrics and the before/after evaluations, the columns of the paper's
    Table 3) and `reward_curve.png` (the paper's Figure 1, left). Returns the summary."""
    output_dir = trainer.args.output_dir
    start = time.time()
    before = evaluate_policy(trainer, eval_prompts, eval_chosen, true_score, seed=trainer.args.seed)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    after = evaluate_policy(trainer, eval_prompts, eval_chosen, true_score, seed=trainer.args.seed)
    trainer.save_model()
    summary = {
        "stages": stage_records(trainer),
        "eval": {"before": before, "after": after},
        "wall_seconds": time.time() - start,
    }
    if trainer.is_world_process_zero():
        write_json(os.path.join(output_dir, "summary.json"), summary)
        plot_reward_curve(summary["stages"], os.path.join(output_dir, "reward_curve.png"))
    return summary
