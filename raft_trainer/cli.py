"""`raft-train`: run RAFT from the command line, on the offline miniature world or on real models.

    raft-train                                   # the miniature HH world, offline, a few minutes on a CPU
    raft-train --model_name_or_path ... --reward_model_name_or_path ... --dataset_name ...
    raft-train --config run.yaml --num_stages 8  # YAML values, flags override them
    raft-train --phase generate --stage 0 ...    # one phase of one stage, one model loaded (see phases.py)
    raft-train ... --resume                      # go on with the run in --output_dir after a crash or a SIGTERM

Every `RAFTConfig` field is a flag (`raft-train --help` lists them).
"""

import os
from dataclasses import dataclass, field

from datasets import load_dataset
from trl import TrlParser

from .phases import check_phase_arguments, finetune_phase, generate_phase, score_phase
from .raft_config import RAFTConfig
from .raft_trainer import RAFTTrainer
from .reporting.console import quiet_dependencies
from .reporting.summary import train_and_report
from .tasks import load_prompts
from .tasks.toy.pipeline import prepare_models
from .tasks.toy.world import make_world, true_score

# The miniature world's defaults, used when no model is named; any flag overrides them.
TOY_DEFAULTS = dict(
    output_dir="runs/raft-toy",
    num_stages=8,
    prompts_per_stage=64,
    num_generations=8,
    max_completion_length=48,
    epochs_per_stage=2,
    per_device_train_batch_size=16,
    learning_rate=5e-4,
    lr_scheduler_type="linear",
    generation_batch_size=256,
    save_strategy="no",
)


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The policy (an SFT model id or path). Omitted: the offline miniature world."}
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The reward model (sequence classification, num_labels=1), id or path."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset id or path for `datasets.load_dataset`, with a 'prompt' column."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split RAFT draws prompts from."})
    dataset_test_split: str | None = field(
        default="test",
        metadata={"help": "Held-out split for evaluation; its 'chosen' column, if any, gives the perplexity."},
    )
    candidate_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Dataset id or path with 'prompt' and 'completion' columns: expert completions ranked with "
            "(--candidate_source both) or instead of (--candidate_source dataset) the model's samples."
        },
    )
    candidate_dataset_split: str = field(default="train", metadata={"help": "The candidate dataset's split."})
    num_eval_prompts: int = field(default=200, metadata={"help": "Held-out prompts evaluated before and after."})
    toy_num_pairs: int = field(
        default=4000, metadata={"help": "Miniature world: preference pairs (and SFT examples) it generates."}
    )
    phase: str = field(
        default="all",
        metadata={
            "help": "'all' runs RAFT whole; 'generate', 'score' or 'finetune' runs that phase of --stage alone.",
            "choices": ["all", "generate", "score", "finetune"],
        },
    )
    stage: int = field(default=0, metadata={"help": "The stage a --phase other than 'all' works on."})
    cache_dir: str = field(
        default=os.path.join("~", ".cache", "raft-trainer"),
        metadata={"help": "Where the miniature world caches its SFT policy and reward model."},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Go on with the run in --output_dir: from its newest complete checkpoint (or the start, if none) "
            "and the stage in flight's generated candidates and rewards. Give the same settings as the first run."
        },
    )
    verbose: bool = field(
        default=False, metadata={"help": "Show the libraries' own progress bars, load reports and warnings."}
    )


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, RAFTConfig]:
    """The script's arguments and the RAFT configuration; the miniature world's defaults apply when no model is
    named (on the command line or in the YAML config)."""

    def parse(defaults: dict):
        parser = TrlParser((ScriptArguments, RAFTConfig))
        parser.set_defaults(**defaults)
        return parser.parse_args_and_config(argv)

    script_args, args = parse({"output_dir": "runs/raft"})
    if script_args.phase == "all":
        # A whole run has held-out prompts: their reward is tracked after every stage, unless --eval_strategy (or
        # the YAML config) says otherwise.
        defaults = TOY_DEFAULTS if script_args.model_name_or_path is None else {"output_dir": "runs/raft"}
        script_args, args = parse({**defaults, "eval_strategy": "epoch"})
    return script_args, args


def main(argv: list[str] | None = None) -> None:
    """The `raft-train` console script."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse `argv` (default: the command line), run RAFT with its evaluation and report; returns the summary."""
    script_args, args = parse_args(argv)
    if not script_args.verbose:
        quiet_dependencies()
    has_candidate_dataset = script_args.candidate_dataset_name is not None
    if script_args.phase != "all":
        check_phase_arguments(args, has_candidate_dataset)
        path = run_phase(script_args, args)
        print(f"Wrote {path}")
        return {"path": path}
    RAFTTrainer.check_arguments(args, candidate_dataset=script_args.candidate_dataset_name, datasets_loaded=False)
    if script_args.model_name_or_path is None:
        world = make_world(seed=args.seed, num_pairs=script_args.toy_num_pairs, num_eval=script_args.num_eval_prompts)
        models = prepare_models(
            world, os.path.expanduser(script_args.cache_dir), seed=args.seed, show_progress=not args.disable_tqdm
        )
        policy, reward_model = models.policy_path, models.reward_model_path
        train_prompts, eval_prompts, eval_chosen, ground_truth = (
            world.train_prompts,
            world.eval_prompts,
            world.eval_chosen,
            true_score,
        )
    else:
        if script_args.reward_model_name_or_path is None or script_args.dataset_name is None:
            raise ValueError(
                "--model_name_or_path needs --reward_model_name_or_path and --dataset_name too "
                "(or name no model at all to run the offline miniature world)."
            )
        policy, reward_model = script_args.model_name_or_path, script_args.reward_model_name_or_path
        train_prompts, eval_prompts, eval_chosen = load_prompts(script_args)
        ground_truth = None

    candidate_dataset = None
    if script_args.candidate_dataset_name is not None:
        candidate_dataset = load_dataset(script_args.candidate_dataset_name, split=script_args.candidate_dataset_split)
    trainer = RAFTTrainer(
        policy,
        reward_model,
        args=args,
        train_dataset=train_prompts,
        candidate_dataset=candidate_dataset,
        eval_dataset=eval_prompts,
    )
    resume = args.resume_from_checkpoint or script_args.resume
    summary = train_and_report(trainer, eval_prompts, eval_chosen, ground_truth, resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        print_evaluation(summary["eval"])
        print(f"Wrote {args.output_dir}/summary.json, reward_curve.png, the model and stages/.")
    # Many processes end by leaving their process group together (with FSDP checkpoints over gloo, an exit without
    # it aborts once everything is written).
    trainer.accelerator.end_training()
    return summary


def run_phase(script_args: ScriptArguments, args: RAFTConfig) -> str:
    """Run one phase of one stage (`--phase`, `--stage`); returns the path of what it wrote."""
    needs = {
        "generate": ["model_name_or_path", "dataset_name"],
        "score": ["reward_model_name_or_path"],
        "finetune": ["model_name_or_path"],
    }[script_args.phase]
    missing = [f"--{name}" for name in needs if getattr(script_args, name) is None]
    if missing:
        raise ValueError(f"--phase {script_args.phase} needs {' and '.join(missing)}.")
    if script_args.phase == "generate":
        train_prompts = load_prompts(script_args)[0]
        return generate_phase(script_args.model_name_or_path, args, train_prompts, script_args.stage)
    if script_args.phase == "score":
        return score_phase(script_args.reward_model_name_or_path, args, script_args.stage)
    return finetune_phase(script_args.model_name_or_path, args, script_args.stage)


def print_evaluation(evaluation: dict) -> None:
    names = list(evaluation["before"])
    print(f"\n{'held-out':>12}" + "".join(f"{name:>12}" for name in names))
    for moment in ("before", "after"):
        print(f"{moment:>12}" + "".join(f"{evaluation[moment][name]:>12.4g}" for name in names))


if __name__ == "__main__":
    main()
