"""The model card of a RAFT-trained model: RAFT and its paper, the rewards, the hyper-parameters, the reward curve."""

import dataclasses
import os
from math import nan

from huggingface_hub import ModelCard, ModelCardData
from transformers import TrainingArguments

from .run_log import plot_reward_curve, stage_records

CITATION = """@article{dong2023raft,
  title   = {{RAFT}: Reward rAnked FineTuning for Generative Foundation Model Alignment},
  author  = {Hanze Dong and Wei Xiong and Deepanshu Goyal and Yihan Zhang and Winnie Chow and Rui Pan and
             Shizhe Diao and Jipeng Zhang and Kashun Shum and Tong Zhang},
  journal = {Transactions on Machine Learning Research},
  year    = {2023},
  eprint  = {2304.06767},
  archivePrefix = {arXiv}
}"""
TRAINING_FIELDS = (
    "learning_rate",
    "lr_scheduler_type",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
)


def hyperparameters(args: TrainingArguments) -> dict:
    """The RAFT fields of the configuration, and the fine-tuning settings that matter most."""
    inherited = {field.name for field in dataclasses.fields(TrainingArguments)}
    raft_fields = [
        f.name for f in dataclasses.fields(args) if f.name not in inherited and f.name != "model_init_kwargs"
    ]
    return {name: getattr(args, name) for name in raft_fields + list(TRAINING_FIELDS)}


def candidate_sentence(args) -> str:
    """Where a stage's candidates come from, as the model card says it."""
    source = getattr(args, "candidate_source", "model")
    if source == "dataset":
        return "ranks the completions of a candidate dataset for each prompt"
    sampled = f"generates {args.num_generations} candidates per prompt"
    return sampled + (" together with the completions of a candidate dataset" if source == "both" else "")


def write_model_card(trainer, base_model: str | None, model_name: str, tags: list[str], output_dir: str) -> str:
    """Write `README.md` (and `reward_curve.png` once stages have run) in `output_dir`; return its path."""
    stages = stage_records(trainer)
    if stages:
        plot_reward_curve(stages, os.path.join(output_dir, "reward_curve.png"))
    rewards = ", ".join(
        f"`{name}` (weight {weight:g})" for name, weight in zip(trainer.reward_names, trainer.reward_weights.tolist())
    )
    lines = [
        f"# {model_name}",
        "",
        f"This model{f' was fine-tuned from `{base_model}`' if base_model else ' was trained'} with **RAFT** "
        "(Reward rAnked FineTuning, [Dong et al., TMLR 2023](https://arxiv.org/abs/2304.06767)) using "
        f"raft-trainer: each stage {candidate_sentence(trainer.args)}, keeps the best by reward"
        f"{' penalised by KL to the initial model' if getattr(trainer.args, 'beta', 0) > 0 else ''} "
        f"({trainer.args.ranking} ranking) and fine-tunes {trainer.card_training}.",
        "",
        f"**Reward:** {rewards}.",
        "",
        *([trainer.card_usage.format(base_model=base_model or "<base model>"), ""] if trainer.card_usage else []),
        "## Hyper-parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| `{name}` | {value} |" for name, value in hyperparameters(trainer.args).items()),
        "",
        "## Reward per stage",
        "",
    ]
    if stages:
        lines += [
            "![reward curve](reward_curve.png)",
            "",
            "| stage | mean reward (policy) | mean reward (kept) | training loss |",
            "|---|---|---|---|",
            *(
                f"| {s['stage']} | {s.get('reward_mean', nan):.4f} | {s['reward_kept_mean']:.4f} "
                f"| {s.get('loss', nan):.4f} |"
                for s in stages
            ),
        ]
    else:
        lines.append("No stage has run yet.")
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    card_data = ModelCardData(library_name=trainer.card_library, base_model=base_model, tags=tags)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path
