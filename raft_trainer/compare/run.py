"""`compare`: train every method from the same start on the same budget, each run in its own process, and report."""

import math
import os
from dataclasses import asdict, replace

from .methods import Run
from .report import write_report
from .settings import TASK_DEFAULTS, CompareArguments
from .task import load_task
from .worker import evaluate_start, run_in_own_process, train_and_measure


def compare(args: CompareArguments | None = None, **overrides) -> dict:
    """Run the comparison described by `args` (a `CompareArguments`; keyword arguments override its fields, or build
    one: `compare(methods=["raft", "ppo"], seed=1)`; `compare(task="arithmetic")` starts from the task's defaults),
    write `results.json`, `comparison.md` and the plots in `output_dir`, and return the results:
    `{"methods": {label: row}, "start": row, "budget": ..., "settings": ...}`.

    Bad settings raise a ValueError naming the argument before anything is loaded. Each method is trained once per
    learning rate of `learning_rates`, each run in a fresh process; a method's row is its run with the best reward on
    the held-out validation (curve) prompts at the end, with `learning_rate_search` listing every run.
    """
    if args is None:  # a task's own defaults first, as on the command line
        args = CompareArguments(**{**TASK_DEFAULTS.get(overrides.get("task"), {}), **overrides})
    else:
        args = replace(args, **overrides)
    args.validate()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    args.check_methods_installed()
    say = (lambda *_, **__: None) if args.quiet else print
    task = load_task(args)
    start = run_in_own_process(evaluate_start, task, args)

    plan = [(label, method, settings, lr) for label, method, settings in args.runs() for lr in args.learning_rates]
    rows_by_label: dict[str, list[dict]] = {}
    for number, (label, method, settings, learning_rate) in enumerate(plan, start=1):
        say(
            f"[{number}/{len(plan)}] {label}, learning rate {learning_rate:g}, "
            f"{settings.completions_budget} completions",
            flush=True,
        )
        output_dir = os.path.join(args.output_dir, "runs", label, f"lr{learning_rate:g}")
        run = Run(label, method, learning_rate, settings, task, output_dir)
        try:
            row = run_in_own_process(train_and_measure, run)
        except Exception as error:  # a baseline that fails does not sink the comparison: it is reported as failed
            row = {"learning_rate": learning_rate, "failed": f"{type(error).__name__}: {error}"}
            say(f"  {label} failed: {row['failed']}", flush=True)
        rows_by_label.setdefault(label, []).append(row)

    methods = {label: best_learning_rate(rows) for label, rows in rows_by_label.items()}
    device = next((row["device"] for row in methods.values() if "failed" not in row), "cpu")
    results = {
        "methods": methods,
        "start": start,
        "budget": {
            "completions": sorted({settings.completions_budget for _, _, settings in args.runs()}),
            "max_completion_length": args.max_completion_length,
            "temperature": args.temperature,
            "learning_rates": args.learning_rates,
            # A rule reward of 0/1 on a verifiable task makes the held-out reward the accuracy.
            "reward": "exact answer (accuracy)" if task.verifiable else "reward model",
            "test_prompts": len(task.test_prompts),
            "curve_prompts": len(task.curve_prompts),
            "device": device,
            "memory": "process peak resident set" if device == "cpu" else "CUDA peak allocated",
        },
        "ablation": args.ablation,
        "settings": asdict(args),
    }
    write_report(results, args.output_dir)
    return results


def validation_reward(row: dict) -> float:
    """The held-out validation reward at the end of a run (its last curve point); -inf if it diverged (NaN)."""
    reward = row["curve"][-1]["reward"]
    return -math.inf if math.isnan(reward) else reward


def best_learning_rate(rows: list[dict]) -> dict:
    """The row of the learning rate with the best validation reward, among the runs that did not fail (all failed:
    the first failure), with `learning_rate_search` listing every run."""
    search = [
        {"learning_rate": row["learning_rate"], "failed": row["failed"]}
        if "failed" in row
        else {
            "learning_rate": row["learning_rate"],
            "validation_reward": row["curve"][-1]["reward"],
            **{name: row[name] for name in ("final_reward", "true_score", "perplexity", "wall_seconds")},
        }
        for row in rows
    ]
    finished = [row for row in rows if "failed" not in row]
    best = max(finished, key=validation_reward) if finished else rows[0]
    return {**best, "learning_rate_search": search}
