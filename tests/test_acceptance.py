"""Selection for binary and sparse rewards through the trainer: a reward threshold, several distinct samples per
prompt, truncated completions never kept, and the per-stage acceptance metrics; checked against the reference."""

import math

import pytest

from raft_trainer import RAFTConfig, RAFTTrainer, reference

from .helpers import by_prompt, read_stage


def topic_a_only(completions, topic, **kwargs):
    """1 for every candidate of the prompt whose topic is 'a', 0 for the others: which prompts pass is known."""
    return [1.0 if t == "a" else 0.0 for t in topic]


def stage_record(trainer, stage: int) -> dict:
    return next(record for record in trainer.state.log_history if record.get("stage") == stage)


def test_a_threshold_keeps_every_distinct_accepted_candidate_and_nothing_from_prompts_without_one(
    make_model, tokenizer, prompts, make_args
):
    args = make_args(num_generations=6, reward_threshold=0.5, kept_per_prompt=6)
    trainer = RAFTTrainer(make_model(), topic_a_only, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    rows = read_stage(args, 0)
    for group in by_prompt(rows, 6):
        kept = [row for row in group if row["selected"]]
        if prompts[group[0]["prompt_index"]]["topic"] == "a":
            # Every candidate passes, and each distinct completion is kept once.
            assert sorted(row["completion"] for row in kept) == sorted({row["completion"] for row in group})
        else:
            assert kept == []  # no candidate reached the threshold: the prompt keeps nothing this stage
    # The same as the reference's selection.
    rewards = [[row["reward"] for row in group] for group in by_prompt(rows, 6)]
    texts = [[row["completion"] for row in group] for group in by_prompt(rows, 6)]
    expected = reference.accepted_per_group(rewards, threshold=0.5, per_group=6, texts=texts)
    assert [[k for k, row in enumerate(group) if row["selected"]] for group in by_prompt(rows, 6)] == [
        sorted(indices) for indices in expected
    ]
    record = stage_record(trainer, 0)
    assert record["num_kept"] == sum(rows["selected"])
    assert record["pass_rate"] == pytest.approx(1 / 4)
    assert record["prompts_with_accepted"] == pytest.approx(1 / 4)
    assert record["prompts_all_accepted"] == pytest.approx(1 / 4)
    assert record["reward_kept_mean"] == 1.0


def test_without_a_threshold_a_prompt_keeps_its_best_even_when_it_is_wrong(make_model, tokenizer, prompts, make_args):
    args = make_args(num_generations=6)
    trainer = RAFTTrainer(make_model(), topic_a_only, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    rows = read_stage(args, 0)
    assert [sum(row["selected"] for row in group) for group in by_prompt(rows, 6)] == [1, 1, 1, 1]
    record = stage_record(trainer, 0)
    assert "pass_rate" not in record  # nothing is rejected on its own without a threshold
    assert record["truncated_share"] == pytest.approx(sum(row["completion_length"] == 8 for row in rows) / len(rows))


def test_truncated_completions_are_never_kept(make_model, tokenizer, prompts, make_args):
    def length(completion_ids, **kwargs):  # favours the longest, i.e. the truncated ones
        return [float(len(ids)) for ids in completion_ids]

    args = make_args(num_generations=8, max_completion_length=3, mask_truncated_completions=True)
    trainer = RAFTTrainer(make_model(), length, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    rows = read_stage(args, 0)
    assert any(rows["truncated"]) and not all(rows["truncated"])
    assert not any(row["truncated"] for row in rows if row["selected"])
    # Truncated means cut at the limit without an end token, and the reference picks the best of the rest.
    assert all(row["completion_length"] == 3 for row in rows if row["truncated"])
    groups = by_prompt(rows, 8)
    rewards = [[None if row["truncated"] else row["reward"] for row in group] for group in groups]
    expected = reference.accepted_per_group(rewards, per_group=1)
    assert [[k for k, row in enumerate(group) if row["selected"]] for group in groups] == expected
    record = stage_record(trainer, 0)
    assert record["truncated_share"] == pytest.approx(sum(rows["truncated"]) / len(rows))
    assert record["pass_rate"] == pytest.approx(1 - record["truncated_share"])


def test_a_stage_trains_the_same_number_of_steps_whatever_it_kept(make_model, tokenizer, prompts, make_args):
    # Two stages of 4 prompts, batches of 2, 1 epoch: 2 optimizer steps a stage, whether 1 or 6 candidates were
    # kept, so the learning-rate schedule and the stage read off the step count stay exact.
    args = make_args(
        num_stages=2, num_generations=6, reward_threshold=0.5, kept_per_prompt=6, per_device_train_batch_size=2
    )
    trainer = RAFTTrainer(make_model(), topic_a_only, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2 * math.ceil(4 / 2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(kept_per_prompt=0), "kept_per_prompt must be >= 1"),
        (dict(kept_per_prompt=2, ranking="global"), "needs ranking='local'"),
    ],
)
def test_bad_selection_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        RAFTConfig(output_dir=str(tmp_path), **overrides)


def test_samples_per_stage_sets_the_pass_so_that_every_kept_sample_is_trained_on(
    make_model, tokenizer, prompts, make_args
):
    args = make_args(num_generations=6, reward_threshold=0.5, kept_per_prompt=6, per_device_train_batch_size=2)
    args.samples_per_stage = 6  # the topic-a prompt keeps up to 6 distinct candidates
    trainer = RAFTTrainer(make_model(), topic_a_only, args=args, train_dataset=prompts, processing_class=tokenizer)
    trained = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *rest, **kwargs):
        trained.extend(
            tuple(ids[labels != -100].tolist()) for ids, labels in zip(inputs["input_ids"], inputs["labels"])
        )
        return compute_loss(model, inputs, *rest, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    assert trainer.state.global_step == 3  # 6 samples in batches of 2
    rows = read_stage(args, 0)
    kept = [row for row in rows if row["selected"]]
    assert len(trained) == 6 and len({*trained}) == len(kept)  # each kept sample once, the rest of the pass repeats
