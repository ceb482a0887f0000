"""Each method of the comparison, trained from the same start with the same budget: RAFT, RAFT++ and Reinforce-Rej
(our `RAFTTrainer`), PPO (TRL's `experimental.ppo.PPOTrainer`), GRPO and RLOO (TRL's `GRPOTrainer`, `RLOOTrainer`),
all used as they are.

A method function builds its trainer with the shared settings, trains it with the curve callback attached, and
returns the trained policy and how many completions the run generated (counted as they were scored).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..raft_config import RAFTConfig
from ..raft_trainer import RAFTTrainer
from ..reporting.stage_table import StageTableCallback
from ..sequences import tokenize_prompts
from .progress import CountingModule, CountingReward, RewardCurve
from .settings import RAFT_FAMILY, CompareArguments
from .task import ComparisonTask


@dataclass
class Run:
    """One training run: a method with one learning rate, in its own process."""

    label: str  # the row name, e.g. "ppo" or "raft-K16"
    method: str  # one of settings.METHODS
    learning_rate: float
    settings: CompareArguments
    task: ComparisonTask
    output_dir: str


@dataclass
class TrainedPolicy:
    model: PreTrainedModel
    completions: int  # generated during training, as counted
    log_history: list[dict]  # the trainer's own log records (loss, clip fraction, ratio, entropy, ...)


def shared_training_arguments(run: Run) -> dict:
    """The `TrainingArguments` every method gets alike."""
    settings = run.settings
    return dict(
        output_dir=run.output_dir,
        learning_rate=run.learning_rate,
        lr_scheduler_type="linear",
        per_device_train_batch_size=settings.per_device_train_batch_size,
        seed=settings.seed,
        bf16=settings.bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        report_to="none",
        save_strategy="no",
        **vllm_arguments(settings),
        disable_tqdm=True,  # progress is the curve's line at each checkpoint
    )


def vllm_arguments(settings: CompareArguments) -> dict:
    """vLLM sampling, colocated, alike for the RAFT family and TRL's GRPO / RLOO (PPO has none: refused)."""
    if not settings.use_vllm:
        return {}
    return dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=settings.vllm_gpu_memory_utilization)


def train_raft(run: Run, tokenizer, reward_fn, curve: RewardCurve) -> TrainedPolicy:
    """RAFT, RAFT++ or Reinforce-Rej (Xiong et al. 2025): our `RAFTTrainer` with `loss_type` = the method."""
    settings = run.settings
    args = RAFTConfig(
        **shared_training_arguments(run),
        num_stages=settings.num_stages,
        prompts_per_stage=settings.prompts_per_stage,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        beta=settings.beta,
        epochs_per_stage=settings.epochs_per_stage,
        generation_batch_size=settings.generation_batch_size,
        reward_threshold=settings.reward_threshold,
        sample_allocation=settings.sample_allocation,
        settled_prompt_weight=settings.settled_prompt_weight,
        advantage_baseline=settings.advantage_baseline if run.method == "reinforce_rej" else "none",
        loss_type=run.method,
        log_entropy=run.method != "raft",  # free where the loss computes the log-probs anyway
        # A comparison runs every method to its budget: a stage that keeps nothing (at 4 prompts a stage, none
        # right or, for Reinforce-Rej, none with contrast) is passed over, as GRPO steps on a batch whose
        # advantages are all zero, and never stops the run.
        max_empty_stages=settings.num_stages + 1,
        **family_selection(run.method, settings),
        **clipped_loss_shape(run.method, settings),
    )
    counter = CountingReward(reward_fn)
    trainer = RAFTTrainer(
        run.task.policy, counter, args=args, train_dataset=run.task.train_prompts, processing_class=tokenizer
    )
    trainer.remove_callback(StageTableCallback)
    return _train(trainer, curve, counter, lambda: trainer.accelerator.unwrap_model(trainer.model), at_stage_end=True)


def family_selection(method: str, settings: CompareArguments) -> dict:
    """Which candidates a member of the RAFT family keeps. None cut off at the length limit when
    `raft_mask_truncated_completions` (unset: `mask_truncated_completions`) says so. RAFT and RAFT++ keep up to
    `kept_per_prompt` per prompt, `samples_per_stage` a pass (RAFT++ `raft_pp_samples_per_stage` when set);
    Reinforce-Rej keeps every candidate of the prompts whose rewards differ (one choice per prompt), half of the
    stage's candidates a pass."""
    mask = settings.raft_mask_truncated_completions
    selection = dict(mask_truncated_completions=settings.mask_truncated_completions if mask is None else mask)
    if method == "reinforce_rej":
        return selection | dict(kept_per_prompt=1, samples_per_stage=settings.completions_per_stage // 2)
    samples = settings.samples_per_stage
    if method == "raft++" and settings.raft_pp_samples_per_stage is not None:
        samples = settings.raft_pp_samples_per_stage
    return selection | dict(kept_per_prompt=settings.kept_per_prompt, samples_per_stage=samples)


def clipped_loss_shape(method: str, settings: CompareArguments) -> dict:
    """The dual clip, the upper clip bound and the entropy bonus of RAFT++'s and Reinforce-Rej's clipped loss; RAFT's
    SFT loss has no ratio to clip, so it keeps RAFTConfig's defaults."""
    if method == "raft":
        return {}
    return dict(dual_clip=settings.dual_clip, epsilon_high=settings.epsilon_high, entropy_coef=settings.entropy_coef)


def train_ppo(run: Run, tokenizer, reward_fn, curve: RewardCurve) -> TrainedPolicy:
    """TRL's PPO: policy, reference (a copy TRL makes), value model (loaded from the reward model, as in TRL's
    example) and the reward model, `total_episodes` = the budget, `completions_per_update` episodes per update."""
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    settings = run.settings
    per_update = settings.completions_per_update
    args = PPOConfig(
        **shared_training_arguments(run),
        total_episodes=settings.completions_budget,
        gradient_accumulation_steps=per_update // settings.per_device_train_batch_size,
        num_mini_batches=1,
        local_rollout_forward_batch_size=per_update,
        response_length=settings.max_completion_length,
        temperature=settings.temperature,
        stop_token="eos",
        num_sample_generations=0,
    )
    tokenizer.padding_side = "left"
    _, prompt_ids = tokenize_prompts(run.task.train_prompts, tokenizer, max_prompt_length=None)
    # The frozen reward model every method is scored with (the evaluations' too): PPO calls it directly, so that no
    # method holds one more model than it needs.
    reward_model = reward_fn.model
    counter = CountingModule(reward_model.score)
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(run.task.policy),
        ref_model=None,
        reward_model=reward_model,
        value_model=AutoModelForSequenceClassification.from_pretrained(run.task.reward_model, num_labels=1),
        train_dataset=Dataset.from_dict({"input_ids": prompt_ids}),
        callbacks=[curve],
    )
    return _train(trainer, curve, counter, lambda: trainer.accelerator.unwrap_model(trainer.model).policy)


def train_group_relative(trainer_name: str) -> Callable:
    """GRPO or RLOO from TRL: groups of `num_generations` completions per prompt, `completions_per_update`
    completions per optimizer update (generated for it: on-policy), the budget's worth of completions in all."""

    def train(run: Run, tokenizer, reward_fn, curve: RewardCurve) -> TrainedPolicy:
        import trl

        trainer_class, config_class = getattr(trl, f"{trainer_name}Trainer"), getattr(trl, f"{trainer_name}Config")
        settings = run.settings
        per_update = settings.completions_per_update
        args = config_class(
            **shared_training_arguments(run),
            max_steps=settings.completions_budget // per_update,
            gradient_accumulation_steps=per_update // settings.per_device_train_batch_size,
            num_generations=settings.num_generations,
            max_completion_length=settings.max_completion_length,
            mask_truncated_completions=settings.mask_truncated_completions,
            temperature=settings.temperature,
        )
        counter = CountingReward(reward_fn)
        trainer = trainer_class(
            model=AutoModelForCausalLM.from_pretrained(run.task.policy),
            reward_funcs=counter,
            args=args,
            train_dataset=run.task.train_prompts,
            processing_class=tokenizer,
        )
        return _train(trainer, curve, counter, lambda: trainer.accelerator.unwrap_model(trainer.model))

    return train


TRAINERS: dict[str, Callable[[Run, PreTrainedTokenizerBase, Callable, RewardCurve], TrainedPolicy]] = {
    **{method: train_raft for method in RAFT_FAMILY},
    "ppo": train_ppo,
    "grpo": train_group_relative("GRPO"),
    "rloo": train_group_relative("RLOO"),
}


def _train(
    trainer: Trainer, curve: RewardCurve, counter, policy: Callable[[], PreTrainedModel], at_stage_end: bool = False
) -> TrainedPolicy:
    """Train with the curve attached and the trainer's own console logging off."""
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    if curve not in trainer.callback_handler.callbacks:
        trainer.add_callback(curve)
    curve.attach(counter, policy, at_stage_end)
    os.makedirs(trainer.args.output_dir, exist_ok=True)
    trainer.train()
    return TrainedPolicy(policy(), counter.count, trainer.state.log_history)
