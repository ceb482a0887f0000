"""`raft-compare`: RAFT, PPO and GRPO (optionally RLOO, RAFT++, Reinforce-Rej) from one SFT policy, one reward model
and one prompt set, on the same budget; on the offline miniature world when no model is named, on a verifiable task
of the real model with `--task`.

    raft-compare                                  # the miniature world, offline, about 8 minutes on 2 CPU cores
    raft-compare --ablation K                     # RAFT with K in {8, 16, 32} (the paper's Table 4)
    raft-compare --task arithmetic --seed 0       # RAFT, RAFT++, Reinforce-Rej, GRPO, RLOO on SmolLM2 (47 min)
    raft-compare --model_name_or_path ... --reward_model_name_or_path ... --dataset_name ...
    raft-compare --summarize runs/compare-seed0 runs/compare-seed1 --output_dir runs/seeds  # mean and range

`raft-compare --help` lists the flags.
"""

import json
import os

from trl import TrlParser

from ..files import write_text
from ..reporting.console import quiet_dependencies
from .report import comparison_markdown, seed_summary
from .run import compare
from .settings import TASK_DEFAULTS, CompareArguments

# Without a model, the dataclass defaults (the miniature world). With one, the paper's setup (section 4.1).
REAL_MODEL_DEFAULTS = dict(
    output_dir="runs/compare-hh",
    num_stages=10,
    prompts_per_stage=2048,
    num_generations=8,
    completions_per_update=512,
    per_device_train_batch_size=4,
    max_completion_length=128,
    temperature=0.85,
    learning_rates=[1e-5, 2e-5],
    generation_batch_size=64,
    num_eval_prompts=2200,
    num_curve_prompts=200,
)


def parse_args(argv: list[str] | None = None) -> CompareArguments:
    """The flags (and `--config run.yaml` values); a task's defaults apply with `--task`, the paper's when a model
    is named."""

    def parse(defaults: dict) -> CompareArguments:
        parser = TrlParser(CompareArguments)
        parser.set_defaults(**defaults)
        (args,) = parser.parse_args_and_config(argv)
        return args

    args = parse({})
    if args.task is not None:
        return parse(TASK_DEFAULTS[args.task]) if args.task in TASK_DEFAULTS else args  # validate() names a bad one
    return parse(REAL_MODEL_DEFAULTS) if args.model_name_or_path is not None else args


def main(argv: list[str] | None = None) -> None:
    """The `raft-compare` console script."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse `argv` (default: the command line) and run the comparison, or the summary of finished ones with
    `--summarize`; returns the results (`{"summary": text}` for a summary)."""
    args = parse_args(argv)
    if not args.verbose:
        quiet_dependencies()
    if args.summarize:
        text = summarize(args.summarize, args.output_dir)
        print(text)
        return {"summary": text}
    results = compare(args)
    if not args.quiet:
        print("\n" + comparison_markdown(results))
        print(f"Wrote {args.output_dir}/results.json, comparison.md and the plots.")
    return results


def summarize(directories: list[str], output_dir: str) -> str:
    """The mean and range over finished comparisons (one per seed, say), written to `output_dir/summary.md`."""
    all_results = []
    for directory in directories:
        path = os.path.join(directory, "results.json")
        if not os.path.isfile(path):
            raise ValueError(f"summarize: {path} does not exist (is {directory!r} a finished raft-compare run?).")
        with open(path) as file:
            all_results.append(json.load(file))
    text = seed_summary(all_results)
    write_text(os.path.join(output_dir, "summary.md"), text)
    return text


if __name__ == "__main__":
    main()
