"""The checks of what `RAFTTrainer`, `raft-train` and the decoupled phases are given, written once.

Each runs before any model is loaded, so a mistake costs a second, not a download or a conversion.
"""

from collections.abc import Callable

from datasets import Dataset

from .raft_config import RAFTConfig
from .stages.prompts import validate_prompt_dataset
from .vllm_sampling import check_vllm_settings


def check_raft_arguments(
    args: RAFTConfig,
    train_dataset: Dataset | None = None,
    has_candidate_dataset: bool = False,
    candidate_model=None,
    prompt_for_generation: Callable | None = None,
    dataset_loaded: bool = True,
) -> None:
    """Reject what `RAFTTrainer` cannot run. `dataset_loaded=False`: the settings only (the CLI checks them before
    it loads the dataset, which the trainer then checks)."""
    if dataset_loaded:
        validate_prompt_dataset(train_dataset)
    if prompt_for_generation is not None and not callable(prompt_for_generation):
        raise ValueError(f"prompt_for_generation must be a callable (got {type(prompt_for_generation).__name__}).")
    if has_candidate_dataset != (args.candidate_source != "model"):
        raise ValueError(
            f"candidate_source={args.candidate_source!r} with candidate_dataset "
            f"{'given' if has_candidate_dataset else 'missing'}: pass a candidate_dataset (raft-train: "
            "--candidate_dataset_name) with candidate_source 'dataset' or 'both', and none with 'model'."
        )
    if args.use_vllm:
        check_vllm_settings(args)
    if args.candidate_source == "dataset" and (candidate_model is not None or prompt_for_generation is not None):
        raise ValueError(
            "candidate_source='dataset' samples nothing, so candidate_model and prompt_for_generation would go "
            "unused: drop them, or set candidate_source='both'."
        )
    if args.use_vllm and candidate_model is not None:
        raise ValueError(
            "use_vllm=True samples with the policy: drop candidate_model, or set use_vllm=False to sample with it."
        )


def check_phase_arguments(args: RAFTConfig, has_candidate_dataset: bool = False) -> None:
    """Reject what the decoupled phases cannot run: they rank the model's own samples only."""
    if args.candidate_source != "model" or has_candidate_dataset:
        raise ValueError(
            f"candidate_source={args.candidate_source!r}"
            f"{' with a candidate dataset' if has_candidate_dataset else ''}: the phases rank the model's samples "
            "only; set candidate_source='model' without a candidate dataset (raft-train: drop "
            "--candidate_dataset_name), or use RAFTTrainer for candidates from a dataset."
        )
    if args.reward_threshold is not None or args.kept_per_prompt > 1 or args.mask_truncated_completions:
        raise ValueError(
            "reward_threshold, kept_per_prompt > 1 and mask_truncated_completions are RAFTTrainer's: the score phase "
            "keeps the best candidate of each prompt; drop them, or use RAFTTrainer."
        )
    if args.loss_type != "raft" or args.kl_loss_coef > 0:
        raise ValueError(
            f"loss_type={args.loss_type!r}, kl_loss_coef={args.kl_loss_coef}: the finetune phase trains with the SFT "
            "loss only; set loss_type='raft' and kl_loss_coef=0, or use RAFTTrainer for RAFT++ and Reinforce-Rej."
        )
    if args.use_vllm:
        check_vllm_settings(args)


def raft_config_of(args) -> RAFTConfig | None:
    """`RAFTTrainer`'s `args`: a RAFTConfig, None, or a TRL GRPOConfig carried over (`RAFTConfig.from_grpo_config`)."""
    if args is None or isinstance(args, RAFTConfig):
        return args
    from trl import GRPOConfig

    if isinstance(args, GRPOConfig):
        return RAFTConfig.from_grpo_config(args)
    raise ValueError(
        f"args must be a RAFTConfig (got {type(args).__name__}): RAFTConfig(output_dir=..., ...) takes every "
        "TrainingArguments field too; a trl GRPOConfig is carried over (RAFTConfig.from_grpo_config)."
    )


def one_reward_argument(reward_funcs, reward_fn):
    """The trainers' rewards, given as `reward_funcs` (TRL's name) or by the former name `reward_fn`: one of them."""
    if reward_funcs is not None and reward_fn is not None:
        raise ValueError("reward_funcs and reward_fn are the same argument (reward_fn is its former name): give one.")
    if reward_funcs is None and reward_fn is None:
        raise ValueError(
            "reward_funcs is missing: give a reward function, a reward-model id or model, or a list of these."
        )
    return reward_funcs if reward_funcs is not None else reward_fn
