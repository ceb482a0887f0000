"""Candidates from a dataset (expert or human completions), ranked with or instead of the model's samples."""

import copy
import logging
from collections import defaultdict
from pathlib import Path

import pytest
from datasets import Dataset

from raft_trainer import RAFTTrainer, reference

from .helpers import (
    CHAT_TEMPLATE,
    NO_DROPOUT,
    completion_token_log_probs,
    read_stage,
    record_candidates,
    share_of_apple,
)

EXPERT = Dataset.from_dict(
    {
        "prompt": ["say something", "tell me a word", "tell me a word", "not a training prompt"],
        "completion": ["apple apple apple", "apple dog", "dog", "apple"],
    }
)


def groups_of(rows: Dataset) -> dict[int, list[dict]]:
    """The stage file's candidates grouped by drawn prompt (each prompt is drawn once in these tests)."""
    groups = defaultdict(list)
    for row in rows.to_list():
        groups[row["prompt_index"]].append(row)
    return dict(groups)


def test_dataset_completions_are_ranked_with_the_model_samples(make_model, tokenizer, prompts, make_args):
    model = make_model(**NO_DROPOUT)
    initial = copy.deepcopy(model).eval()
    args = make_args(candidate_source="both", logging_steps=1)
    trainer = RAFTTrainer(
        model, share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer, candidate_dataset=EXPERT
    )
    recorded = record_candidates(trainer)
    trainer.train()

    rows = read_stage(args, 0)
    groups = groups_of(rows)
    expert_count = {"say something": 1, "tell me a word": 2}
    for group in groups.values():
        prompt = group[0]["prompt"]
        assert [row["source"] for row in group] == ["model"] * 4 + ["dataset"] * expert_count.get(prompt, 0)
        assert [row["completion"] for row in group if row["source"] == "dataset"] == [
            completion for p, completion in zip(EXPERT["prompt"], EXPERT["completion"]) if p == prompt
        ]
        selected = [row["selected"] for row in group]
        assert selected.index(True) == reference.best_of_k([[row["reward"] for row in group]])[0]
        assert sum(selected) == 1
    assert rows["selected"].count(True) == 4

    # The expert answer with reward 1 beats the model's samples, and is trained on with its end-of-sequence token.
    kept_expert = [row for row in rows if row["selected"] and row["source"] == "dataset"]
    assert "apple apple apple" in [row["completion"] for row in kept_expert]
    candidates = recorded[0]
    eos = tokenizer.eos_token_id
    for i, source in enumerate(candidates["source"]):
        if source == "dataset":
            ids = tokenizer(candidates["completion"][i], add_special_tokens=False)["input_ids"]
            assert candidates["completion_ids"][i] == ids + [eos]
    kept = [i for i, row in enumerate(rows) if row["selected"]]
    log_probs = [
        completion_token_log_probs(initial, candidates["prompt_ids"][i], candidates["completion_ids"][i]) for i in kept
    ]
    logged_loss = next(record["loss"] for record in trainer.state.log_history if "loss" in record)
    assert logged_loss == pytest.approx(reference.sft_loss(log_probs), abs=2e-4)
    stage_record = next(record for record in trainer.state.log_history if "kept_from_dataset" in record)
    assert stage_record["kept_from_dataset"] == len(kept_expert) / 4
    # The policy's metrics describe its own samples; the dataset's completions have their own mean.
    sampled = [row for row in rows if row["source"] == "model"]
    from_dataset = [row for row in rows if row["source"] == "dataset"]
    assert stage_record["reward_mean"] == pytest.approx(sum(r["reward"] for r in sampled) / len(sampled))
    assert stage_record["reward_dataset_mean"] == pytest.approx(
        sum(r["reward"] for r in from_dataset) / len(from_dataset)
    )
    assert stage_record["completion_length_mean"] == sum(r["completion_length"] for r in sampled) / len(sampled)
    trainer.create_model_card()
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "generates 4 candidates per prompt together with the completions of a candidate dataset" in card


@pytest.mark.parametrize("ranking", ["local", "global"])
def test_dataset_completions_replace_the_model_samples(make_model, tokenizer, prompts, make_args, caplog, ranking):
    args = make_args(candidate_source="dataset", ranking=ranking, prompts_per_stage=1, num_generations=2)
    with caplog.at_level(logging.WARNING):
        trainer = RAFTTrainer(
            make_model(),
            share_of_apple,
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
            candidate_dataset=EXPERT,
        )
    assert "dropped 2 of 4 prompts" in caplog.text
    assert list(trainer.train_dataset["prompt"]) == ["say something", "tell me a word"]

    def no_sampling(*args, **kwargs):
        raise AssertionError("candidate_source='dataset' must not sample from the model")

    trainer.sample = no_sampling
    trainer.train()
    rows = read_stage(args, 0)
    assert set(rows["source"]) == {"dataset"}
    # Local ranking draws one prompt and keeps its best completion; global ranking draws b*K = 2 prompts, pools
    # their 3 completions and keeps the top b = 1: "apple apple apple" either way when its prompt is drawn.
    expected_prompts = {"local": 1, "global": 2}[ranking]
    assert len(set(rows["prompt_index"])) == expected_prompts
    kept = [row for row in rows if row["selected"]]
    assert len(kept) == 1
    assert kept[0]["reward"] == max(rows["reward"])
    stage_record = next(record for record in trainer.state.log_history if "stage" in record)
    assert "reward_mean" not in stage_record and "completion_length_mean" not in stage_record  # nothing sampled
    assert stage_record["reward_dataset_mean"] == pytest.approx(sum(rows["reward"]) / len(rows))


def test_completions_the_policy_did_not_sample_end_with_its_end_of_turn_token(
    make_model, tokenizer, prompts, make_args
):
    # A chat model may stop at several tokens; text it did not sample ends with the tokenizer's eos (its end of turn)
    # when that is one of them, not with the first of the list.
    model = make_model()
    other_stop = tokenizer.convert_tokens_to_ids("<unk>")
    model.generation_config.eos_token_id = [other_stop, tokenizer.eos_token_id]
    trainer = RAFTTrainer(
        model,
        share_of_apple,
        args=make_args(candidate_source="both"),
        train_dataset=prompts,
        processing_class=tokenizer,
        candidate_dataset=EXPERT,
    )
    assert trainer.end_token_id == tokenizer.eos_token_id
    assert all(ids[-1] == tokenizer.eos_token_id for candidates in trainer.dataset_candidates for _, ids in candidates)


def test_chat_completions_are_matched_by_their_messages(make_model, tokenizer, make_args):
    tokenizer.chat_template = CHAT_TEMPLATE
    chat = [{"role": "user", "content": "say something"}]
    chats = Dataset.from_dict({"prompt": [chat, [{"role": "user", "content": "tell me"}]]})
    expert = Dataset.from_dict({"prompt": [chat], "completion": [[{"role": "assistant", "content": "apple apple"}]]})

    def reward(completions, **kwargs):
        return share_of_apple([message[0]["content"] for message in completions])

    args = make_args(candidate_source="both", prompts_per_stage=2, num_generations=2)
    trainer = RAFTTrainer(
        make_model(),
        reward,
        args=args,
        train_dataset=chats,
        processing_class=tokenizer,
        candidate_dataset=expert,
    )
    trainer.train()
    file_rows = read_stage(args, 0)
    assert file_rows["source"].count("dataset") == 1
    expert_row = next(row for row in file_rows if row["source"] == "dataset")
    assert expert_row["prompt"] == chat and expert_row["completion"] == "apple apple"
    assert expert_row["reward"] == 1.0 and expert_row["selected"]


def test_dataset_only_rejects_what_it_would_not_use(make_model, tokenizer, prompts, make_args):
    for unused in ({"candidate_model": make_model()}, {"prompt_for_generation": str.upper}):
        with pytest.raises(ValueError, match="candidate_source='dataset' samples nothing"):
            RAFTTrainer(
                "no/such-model",
                share_of_apple,
                args=make_args(candidate_source="dataset"),
                train_dataset=prompts,
                processing_class=tokenizer,
                candidate_dataset=EXPERT,
                **unused,
            )


@pytest.mark.parametrize(
    "source, dataset, message",
    [
        ("both", None, "candidate_source='both' with candidate_dataset missing"),
        ("model", EXPERT, "candidate_source='model' with candidate_dataset given"),
        ("both", EXPERT.remove_columns("completion"), "'prompt' and 'completion' columns"),
        ("both", Dataset.from_dict({"prompt": ["say something"], "completion": [3]}), "must be text"),
        ("dataset", EXPERT.select([3]), "no prompt of candidate_dataset is a prompt of train_dataset"),
    ],
)
def test_bad_candidate_datasets_are_rejected_before_the_model_loads(
    tokenizer, prompts, make_args, source, dataset, message
):
    with pytest.raises(ValueError, match=message):
        RAFTTrainer(
            "no/such-model",
            share_of_apple,
            args=make_args(candidate_source=source),
            train_dataset=prompts,
            processing_class=tokenizer,
            candidate_dataset=dataset,
        )
