"""RAFT's phases run apart: generate to a file, score the file, fine-tune on it, each loading one model."""

import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from raft_trainer import RAFTTrainer, cli, reference
from raft_trainer.files import candidates_file_path, stage_model_path
from raft_trainer.phases import finetune_phase, generate_phase, score_phase
from raft_trainer.stages.prompts import stage_prompt_indices

from .helpers import LEARNING_PROMPTS, LEARNING_RUN, NO_DROPOUT, completion_token_log_probs, read_stage, share_of_apple


def read_candidates(args, stage: int) -> list[dict]:
    with open(candidates_file_path(args.output_dir, stage), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_generate_phase_draws_the_trainers_prompts(make_model, tokenizer, prompts, make_args):
    args = make_args(num_stages=2, prompts_per_stage=3, num_generations=2)
    for stage in range(2):
        generate_phase(make_model(), args, prompts, stage, processing_class=tokenizer)
        rows = read_candidates(args, stage)
        drawn = stage_prompt_indices(stage, 3, len(prompts), args.seed)
        assert [row["prompt_index"] for row in rows] == [index for index in drawn for _ in range(2)]
        assert [row["group"] for row in rows] == [0, 0, 1, 1, 2, 2]
        assert [row["topic"] for row in rows] == [prompts[row["prompt_index"]]["topic"] for row in rows]
        for row in rows:
            assert row["prompt_ids"] == tokenizer(row["prompt"])["input_ids"]
            assert tokenizer.decode(row["completion_ids"], skip_special_tokens=True) == row["completion"]
    # The coupled trainer draws the same prompts for the same stage.
    trainer = RAFTTrainer(make_model(), share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    for stage in range(2):
        assert read_stage(args, stage)["prompt_index"] == [row["prompt_index"] for row in read_candidates(args, stage)]


def test_score_then_finetune_keep_the_best_and_train_on_it(make_model, tokenizer, prompts, make_args):
    args = make_args(prompts_per_stage=4, num_generations=4, per_device_train_batch_size=4, logging_steps=1)
    model = make_model(**NO_DROPOUT)
    initial = copy.deepcopy(model).eval()
    generate_phase(model, args, prompts, 0, processing_class=tokenizer)
    seen = {}

    def reward(prompts, completions, completion_ids, topic, trainer_state, **kwargs):
        seen.update(prompts=prompts, topic=topic)
        return share_of_apple(completions)

    score_phase(reward, args, 0)
    rows = read_stage(args, 0).to_list()
    candidates = read_candidates(args, 0)
    assert seen["topic"] == [row["topic"] for row in candidates]
    assert [row["reward"] for row in rows] == share_of_apple([row["completion"] for row in candidates])
    groups = [rows[i : i + 4] for i in range(0, 16, 4)]
    assert [[row["selected"] for row in group].index(True) for group in groups] == reference.best_of_k(
        [[row["reward"] for row in group] for group in groups]
    )
    assert sum(row["selected"] for row in rows) == 4

    path = finetune_phase(model, args, 0, processing_class=tokenizer)
    assert path == stage_model_path(args.output_dir, 0)
    kept = [row for row in rows if row["selected"]]
    log_probs = [completion_token_log_probs(initial, row["prompt_ids"], row["completion_ids"]) for row in kept]
    with open(f"{path}/trainer_state.json") as file:
        history = json.load(file)["log_history"]
    first_loss = next(record["loss"] for record in history if "loss" in record)
    assert first_loss == pytest.approx(reference.sft_loss(log_probs), abs=2e-4)  # one batch: the whole kept set
    trained = AutoModelForCausalLM.from_pretrained(path).eval()
    trained_log_probs = [completion_token_log_probs(trained, r["prompt_ids"], r["completion_ids"]) for r in kept]
    assert reference.sft_loss(trained_log_probs) < reference.sft_loss(log_probs)


def test_decoupled_stages_raise_the_reward(make_model, tokenizer, make_args):
    prompts = Dataset.from_dict({"prompt": LEARNING_PROMPTS})
    args = make_args(**{**LEARNING_RUN, "num_stages": 3, "lr_scheduler_type": "constant"})
    policy = make_model()
    for stage in range(3):
        generate_phase(policy, args, prompts, stage, processing_class=tokenizer)
        score_phase(share_of_apple, args, stage)
        policy = finetune_phase(policy, args, stage, processing_class=tokenizer)  # the next stage loads this path
    rewards = [read_stage(args, stage)["reward"] for stage in range(3)]
    means = [sum(stage_rewards) / len(stage_rewards) for stage_rewards in rewards]
    assert means[-1] > max(2 * means[0], means[0] + 0.1)


def test_phases_run_from_the_command_line_on_local_files(tmp_path, local_files):
    policy, reward, data, prompts = local_files
    (data / "train.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    common = ["--output_dir", str(tmp_path / "run"), "--prompts_per_stage", "4", "--num_generations", "2"]
    common += ["--max_completion_length", "6", "--disable_tqdm", "true", "--save_strategy", "no"]
    generate = cli.run(["--phase", "generate", "--model_name_or_path", policy, "--dataset_name", str(data), *common])
    score = cli.run(["--phase", "score", "--reward_model_name_or_path", reward, *common])
    finetune = cli.run(["--phase", "finetune", "--model_name_or_path", policy, *common])
    assert generate["path"].endswith("stages/candidates_000.jsonl")
    assert score["path"].endswith("stages/stage_000.jsonl")
    rows = [json.loads(line) for line in open(score["path"])]
    assert len(rows) == 8 and sum(row["selected"] for row in rows) == 4
    trained = AutoModelForCausalLM.from_pretrained(finetune["path"])
    original = AutoModelForCausalLM.from_pretrained(policy)
    assert not torch.equal(trained.lm_head.weight, original.lm_head.weight)


def test_phases_reject_what_they_cannot_do(tmp_path, make_args, prompts):
    with pytest.raises(ValueError, match="--phase generate needs --model_name_or_path and --dataset_name"):
        cli.run(["--phase", "generate", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="run `--phase generate --stage 2` first"):
        score_phase(share_of_apple, make_args(), 2)
    with pytest.raises(ValueError, match="run `--phase score --stage 0` first"):
        finetune_phase("no/such-model", make_args(), 0)
    with pytest.raises(ValueError, match="ranks by reward alone"):
        score_phase(share_of_apple, make_args(beta=0.1), 0)
    with pytest.raises(ValueError, match=r"columns \['completion'\]"):
        generate_phase("no/such-model", make_args(), prompts.add_column("completion", ["x"] * 4), 0)
    with pytest.raises(ValueError, match=r"columns \['reward'\]"):  # the score phase would overwrite it
        generate_phase("no/such-model", make_args(), prompts.add_column("reward", [1.0] * 4), 0)
    with pytest.raises(ValueError, match="stage must be an integer >= 0"):
        generate_phase("no/such-model", make_args(), prompts, -1)
    with pytest.raises(ValueError, match="the phases rank the model's samples only"):
        generate_phase("no/such-model", make_args(candidate_source="both"), prompts, 0)
    with pytest.raises(ValueError, match="drop --candidate_dataset_name"):
        cli.run(
            ["--phase", "score", "--reward_model_name_or_path", "r", "--candidate_dataset_name", "d"]
            + ["--candidate_source", "both", "--output_dir", str(tmp_path)]
        )


def test_the_score_phase_ranks_with_the_settings_the_candidates_were_generated_with(
    make_model, tokenizer, prompts, make_args
):
    generate_phase(
        make_model(), make_args(ranking="global", prompts_per_stage=2), prompts, 0, processing_class=tokenizer
    )
    with pytest.raises(ValueError, match=r"ranking='local' \(generated with 'global'\), prompts_per_stage=4"):
        score_phase(share_of_apple, make_args(), 0)
    score_phase(share_of_apple, make_args(ranking="global", prompts_per_stage=2), 0)


def words_per_two(completions, **kwargs):
    return [len(text.split()) / 2 for text in completions]


def test_the_score_phase_keeps_by_the_trainers_selection_rule(make_model, tokenizer, prompts, make_args):
    # Rejection sampling with every accepted sample kept (Xiong et al. 2025), truncated ones rejected: the phases
    # apply RAFTConfig's selection rule, as RAFTTrainer does, instead of refusing these settings.
    args = make_args(
        prompts_per_stage=4,
        num_generations=4,
        max_completion_length=2,
        reward_threshold=0.3,
        kept_per_prompt=4,
        mask_truncated_completions=True,
    )
    generate_phase(make_model(), args, prompts, 0, processing_class=tokenizer)
    score_phase(words_per_two, args, 0)
    rows = read_stage(args, 0).to_list()
    assert any(row["truncated"] for row in rows) and not all(row["truncated"] for row in rows)
    groups = [rows[start : start + 4] for start in range(0, 16, 4)]
    kept = reference.accepted_per_group(
        [[None if row["truncated"] else row["reward"] for row in group] for group in groups],
        threshold=0.3,
        per_group=4,
        texts=[[row["completion"] for row in group] for group in groups],
    )
    assert [[row["selected"] for row in group] for group in groups] == [
        [index in kept_here for index in range(4)] for kept_here in kept
    ]
    assert any(row["selected"] for row in rows)
