"""RAFT's three phases run apart, each loading one model, for runs too large for one process to hold them all:

    generate   the policy samples stage t's candidates          -> stages/candidates_TTT.jsonl
    score      the reward model(s) score and rank them         -> stages/stage_TTT.jsonl (the trainer's stage file)
    finetune   the policy is fine-tuned on the kept candidates  -> models/stage_TTT/ (the next stage's policy)

The files are the hand-off, so each phase may run on another machine (`raft-train --phase ...`), and each runs under
`accelerate launch` too: the processes share the prompts (generate), the candidates (score) or the kept set (the
Trainer's data parallelism, finetune), and the main process writes the file. A stage draws the same prompts as
`RAFTTrainer` does, ranks them the same way and trains on the same token ids with the same loss; but
each fine-tuning phase starts a fresh optimizer and learning-rate schedule (as LMFlow's RAFT does), and candidates are
ranked by reward alone (the KL-penalised score needs the policy and the reference beside the reward). The phases take
the stage cycle's own steps: the draw (`stages.prompts.draw_prompts`), the groups (`Draw.label`), the gathered pool
(`Pool.gather`) and the configuration's selection rule (`RAFTConfig.selection_rule`).
"""

import copy
import json
import os

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedModel, Trainer, set_seed
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from .files import (
    candidates_file_path,
    settings_file_path,
    stage_file_path,
    stage_model_path,
    write_json,
    write_stage_file,
)
from .memory import check_engines, move_models
from .models import resolve_model_name
from .raft_config import RAFTConfig
from .rewards import as_reward_functions, reward_function_name
from .sequences import (
    candidate_generation_config,
    completion_reward_inputs,
    generate_completions,
    load_tokenizer,
    sft_example,
    tokenize_prompts,
    truncated_flags,
)
from .stages import Pool
from .stages.prompts import contiguous_share, draw_prompts, each_prompt_repeated, validate_prompt_dataset
from .stages.scoring import RewardLog, reward_columns, reward_weight_tensor, score_candidates
from .vllm_sampling import check_vllm_settings, sample_with_vllm, vllm_generation

# The candidates file's own columns; the prompt dataset's other columns follow them, for the reward functions.
CANDIDATE_COLUMNS = (
    "stage",
    "group",
    "prompt_index",
    "prompt",
    "completion",
    "truncated",
    "prompt_ids",
    "completion_ids",
)
# Columns the score phase adds; a dataset column may not take any of these names either.
STAGE_COLUMNS = ("completion_length", "reward", "selected")
# The settings a candidates file was made with, which the score phase must share to rank it as intended.
RANKING_SETTINGS = ("ranking", "prompts_per_stage", "num_generations")


def generate_phase(
    model: str | PreTrainedModel, args: RAFTConfig, train_dataset: Dataset, stage: int, processing_class=None
) -> str:
    """Sample stage `stage`'s candidates from `model` (with vLLM when `args.use_vllm`) and write them to
    `stages/candidates_TTT.jsonl`; returns its path. The stage draws the prompts `RAFTTrainer` would."""
    check_stage(stage)
    validate_prompt_dataset(train_dataset)
    clashes = (set(CANDIDATE_COLUMNS + STAGE_COLUMNS) - {"prompt"}) & set(train_dataset.column_names)
    if clashes:
        raise ValueError(
            f"train_dataset has columns {sorted(clashes)}, which the phases' files use themselves: rename them with "
            "dataset.rename_column(old, new)."
        )
    check_phase_arguments(args)
    processes = PartialState()
    args.check_processes(processes.num_processes)
    from_memory = isinstance(model, PreTrainedModel)  # its weights may differ from the checkpoint vLLM loads
    model, tokenizer = load_policy(model, processing_class, args)
    train_dataset, prompt_ids = tokenize_prompts(
        train_dataset, tokenizer, args.max_prompt_length, args.chat_template_kwargs
    )
    draw = draw_prompts(
        stage,
        train_dataset,
        args.prompts_drawn_per_stage,
        args.seed,
        processes.process_index,
        processes.num_processes,
        args.shuffle_dataset,
    )
    mine = [prompt_ids[i] for i in draw.prompt_indices]
    set_seed(int(np.random.SeedSequence([args.seed, stage, processes.process_index]).generate_state(1)[0]))
    generation_config = candidate_generation_config(model, tokenizer, args)
    if args.use_vllm:
        if from_memory:
            model.to(args.device)  # pushed to vLLM from the accelerator
        engine = vllm_generation(model, Accelerator(), tokenizer, args)
        completion_ids = sample_with_vllm(engine, mine, args.generations_per_prompt, sync_weights=from_memory)
    else:
        completion_ids = generate_completions(
            model.to(args.device),
            mine,
            generation_config,
            args.generations_per_prompt,
            args.generation_batch_size,
            show_progress=not args.disable_tqdm and processes.is_local_main_process,
            continuous_batching=args.continuous_batching,
        )
    prompt_of = each_prompt_repeated(len(mine), args.generations_per_prompt)
    candidates = {
        "stage": [stage] * len(prompt_of),
        "completion": tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        "truncated": truncated_flags(completion_ids, generation_config.eos_token_id),
        "prompt_ids": [mine[i] for i in prompt_of],
        "completion_ids": completion_ids,
    }
    columns = draw.label(candidates, prompt_of)
    if processes.is_main_process:
        write_json(
            settings_file_path(args.output_dir, stage), {name: getattr(args, name) for name in RANKING_SETTINGS}
        )
    rows = {**{name: candidates[name] for name in CANDIDATE_COLUMNS}, **columns}
    path = candidates_file_path(args.output_dir, stage)
    write_on_main_process({name: gather_object(values) for name, values in rows.items()}, path, processes)
    return path


def score_phase(reward_fn, args: RAFTConfig, stage: int, reward_processing_classes=None) -> str:
    """Score stage `stage`'s candidates file with `reward_fn` (as `RAFTTrainer` takes it), rank them, and write the
    stage file `stages/stage_TTT.jsonl` (the trainer's columns, plus the token ids); returns its path."""
    if args.beta > 0:
        raise ValueError(
            f"beta={args.beta}: the score phase ranks by reward alone, since the KL-penalised score needs the policy "
            "and the reference model too. Set beta=0, or run RAFTTrainer, which holds them all."
        )
    check_stage(stage)
    columns = read_jsonl(candidates_file_path(args.output_dir, stage), "generate", stage)
    with open(settings_file_path(args.output_dir, stage), encoding="utf-8") as file:
        generated_with = json.load(file)
    differing = [
        f"{name}={args_value!r} (generated with {generated_with[name]!r})"
        for name in RANKING_SETTINGS
        if (args_value := getattr(args, name)) != generated_with[name]
    ]
    if differing:
        raise ValueError(
            f"the score phase's {', '.join(differing)}: score with the settings stage {stage} was generated with."
        )
    processes = PartialState()
    if len(columns["prompt"]) < processes.num_processes:
        raise ValueError(
            f"{len(columns['prompt'])} candidates for {processes.num_processes} processes: run the score phase on "
            "fewer processes."
        )
    reward_funcs = as_reward_functions(
        reward_fn,
        reward_processing_classes,
        show_progress=not args.disable_tqdm and processes.is_local_main_process,
        batch_size=args.generation_batch_size,
        trust_remote_code=args.trust_remote_code,
    )
    weights = reward_weight_tensor(args.reward_weights, len(reward_funcs))
    move_models(reward_funcs, args.device)
    # Each process scores a contiguous share of the candidates; the rewards are gathered and ranked whole.
    mine = {
        name: contiguous_share(values, processes.process_index, processes.num_processes)
        for name, values in columns.items()
    }
    reward_log = RewardLog()
    kwargs = {
        "prompts": mine["prompt"],
        **completion_reward_inputs(mine),
        **{name: values for name, values in mine.items() if name not in CANDIDATE_COLUMNS},
        "trainer_state": None,  # no Trainer runs this phase
        "log_extra": reward_log.log_extra,  # columns of the stage file; `log_metric`s have no log record here
        "log_metric": reward_log.log_metric,
    }
    rewards, rewards_per_func = score_candidates(reward_funcs, weights, kwargs, args.device)
    logged = gather_object(reward_log.take(len(rewards))[0])
    pool = Pool.gather(
        {
            "candidates": {name: mine[name] for name in CANDIDATE_COLUMNS},
            "rewards": rewards,
            "rewards_per_func": rewards_per_func,
            "kept_by_filter": torch.ones(len(rewards), dtype=torch.bool),
            "scores": rewards,  # by reward alone (see the module docstring)
        }
    )
    chosen = args.selection_rule().select(pool)
    if not chosen.kept.any():
        rewarded = int((~torch.isnan(pool.rewards)).sum())
        raise RuntimeError(
            f"stage {stage} kept no candidate: {rewarded} of {len(pool.rewards)} got a reward{chosen.rule}."
        )
    rewards, rewards_per_func, kept = pool.rewards, pool.rewards_per_func, chosen.kept
    rows = {
        **columns,
        "completion_length": [len(ids) for ids in columns["completion_ids"]],
        **reward_columns(rewards, rewards_per_func, [reward_function_name(f) for f in reward_funcs]),
        **{column: [values.get(column) for values in logged] for column in sorted({c for v in logged for c in v})},
        "selected": kept.tolist(),
    }
    path = stage_file_path(args.output_dir, stage)
    write_on_main_process(rows, path, processes)
    return path


def finetune_phase(model: str | PreTrainedModel, args: RAFTConfig, stage: int, processing_class=None) -> str:
    """Fine-tune `model` on the kept candidates of stage `stage`'s stage file for `args.epochs_per_stage` epochs with
    the SFT loss, and save it (with its tokenizer and `trainer_state.json`) to `models/stage_TTT`; returns that
    path."""
    check_stage(stage)
    rows = read_jsonl(stage_file_path(args.output_dir, stage), "score", stage)
    examples = [
        sft_example(prompt_ids, completion_ids)
        for prompt_ids, completion_ids, selected in zip(rows["prompt_ids"], rows["completion_ids"], rows["selected"])
        if selected
    ]
    model, tokenizer = load_policy(model, processing_class, args)
    output_dir = stage_model_path(args.output_dir, stage)
    phase_args = copy.copy(args)
    phase_args.num_train_epochs, phase_args.output_dir = args.epochs_per_stage, output_dir
    trainer = Trainer(
        model=model,
        args=phase_args,
        train_dataset=Dataset.from_list(examples),
        data_collator=DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    check_engines(trainer)
    trainer.train()
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the phase's loss log, beside the model
    return output_dir


def check_phase_arguments(args: RAFTConfig, has_candidate_dataset: bool = False) -> None:
    """Reject what the decoupled phases cannot run, before any model loads: they rank the model's own samples, and
    the finetune phase trains with the SFT loss."""
    if args.candidate_source != "model" or has_candidate_dataset:
        raise ValueError(
            f"candidate_source={args.candidate_source!r}"
            f"{' with a candidate dataset' if has_candidate_dataset else ''}: the phases rank the model's samples "
            "only; set candidate_source='model' without a candidate dataset (raft-train: drop "
            "--candidate_dataset_name), or use RAFTTrainer for candidates from a dataset."
        )
    if args.settled_prompt_weight is not None:
        raise ValueError(
            "settled_prompt_weight: the phases draw each stage's prompts on their own, without the earlier stages' "
            "outcomes; drop settled_prompt_weight, or use RAFTTrainer."
        )
    if args.sample_allocation != "uniform":
        raise ValueError(
            f"sample_allocation={args.sample_allocation!r}: its second draw depends on the first draw's rewards, and "
            "the generate phase does not score; set sample_allocation='uniform', or use RAFTTrainer."
        )
    if args.loss_type != "raft" or args.kl_loss_coef > 0:
        raise ValueError(
            f"loss_type={args.loss_type!r}, kl_loss_coef={args.kl_loss_coef}: the finetune phase trains with the SFT "
            "loss only; set loss_type='raft' and kl_loss_coef=0, or use RAFTTrainer for RAFT++ and Reinforce-Rej."
        )
    if args.use_vllm:
        check_vllm_settings(args)


def check_stage(stage: int) -> None:
    if not isinstance(stage, int) or stage < 0:
        raise ValueError(f"stage must be an integer >= 0 (got {stage!r}).")


def write_on_main_process(columns: dict[str, list], path: str, processes: PartialState) -> None:
    """Write the file once, from the main process; the others wait until it is there."""
    if processes.is_main_process:
        write_stage_file(path, columns)
    processes.wait_for_everyone()


def load_policy(model: str | PreTrainedModel, processing_class, args: RAFTConfig):
    """The policy and its tokenizer (with a pad token), loaded when given by id or path."""
    if isinstance(model, str):
        model = AutoModelForCausalLM.from_pretrained(resolve_model_name(model), **args.from_pretrained_kwargs)
    return model, load_tokenizer(model.name_or_path, processing_class, args.trust_remote_code)


def read_jsonl(path: str, previous_phase: str, stage: int) -> dict[str, list]:
    """The columns of a JSON-lines file a previous phase wrote."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: run `--phase {previous_phase} --stage {stage}` first.")
    with open(path, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no candidate: run `--phase {previous_phase} --stage {stage}` again.")
    return {name: [row[name] for row in rows] for name in rows[0]}
