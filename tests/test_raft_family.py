"""RAFT++ and Reinforce-Rej through RAFTTrainer on tiny models: every training step's loss equals the numpy reference
computed from the batch, the sampling log-probs in the stage file are the stage-start policy's, and Reinforce-Rej
keeps exactly the prompts whose rewards differ."""

import copy

import pytest
import torch

from raft_trainer import RAFTConfig, RAFTTrainer, reference
from raft_trainer.sequences import completion_token_log_probs

from .helpers import NO_DROPOUT, by_prompt, read_stage, record_advantages, record_candidates


def apple_or_not(completions, **kwargs):
    """+1 when the completion says 'apple', -1 otherwise: a signed 0/1 reward, as the paper ran Reinforce-Rej."""
    return [1.0 if "apple" in text.split() else -1.0 for text in completions]


def spy_on_losses(trainer, reference_model=None) -> list[dict]:
    """Record, at every training step, the trainer's loss and the reference loss computed from the same batch."""
    steps = []
    compute_loss = trainer.compute_loss
    args = trainer.args

    def spy(model, inputs, *rest, **kwargs):
        batch = {name: tensor.clone() for name, tensor in inputs.items()}
        with torch.no_grad():
            log_probs, mask = completion_token_log_probs(model, batch, args.temperature)
            ref = None
            if reference_model is not None:
                ref, _ = completion_token_log_probs(reference_model, batch, args.temperature)
        loss = compute_loss(model, inputs, *rest, **kwargs)
        rows = [row[m].tolist() for row, m in zip(log_probs, mask)]
        old = [row[1:][m].tolist() for row, m in zip(batch["old_log_probs"], mask)]
        expected, clip_fraction, ratio_mean = reference.clipped_policy_loss(
            rows, old, batch["advantages"].tolist(), args.epsilon, args.epsilon_high or args.epsilon
        )
        if ref is not None:
            kl = reference.low_var_kl(
                [x for row in rows for x in row], [x for row, m in zip(ref, mask) for x in row[m].tolist()]
            )
            expected += args.kl_loss_coef * float(kl.mean())
        steps.append({"loss": loss.item(), "expected": expected, "clip_fraction": clip_fraction, "old": old})
        return loss

    trainer.compute_loss = spy
    return steps


def family_args(make_args, loss_type, **overrides):
    return make_args(
        loss_type=loss_type,
        num_generations=4,
        epochs_per_stage=3,
        per_device_train_batch_size=4,
        temperature=0.7,
        learning_rate=5e-2,  # large, so that later steps move the ratio out of the clip range
        logging_steps=1,
        log_entropy=True,
        **overrides,
    )


@pytest.mark.parametrize("loss_type", ["raft++", "reinforce_rej"])
def test_each_step_loss_equals_the_reference_clipped_loss(make_model, tokenizer, prompts, make_args, loss_type):
    args = family_args(make_args, loss_type)
    model = make_model(**NO_DROPOUT)
    initial = copy.deepcopy(model).eval()
    trainer = RAFTTrainer(model, apple_or_not, args=args, train_dataset=prompts, processing_class=tokenizer)
    steps = spy_on_losses(trainer)
    recorded = record_candidates(trainer, "scored_candidates")
    trainer.train()

    assert len(steps) == 3
    for step in steps:
        assert step["loss"] == pytest.approx(step["expected"], abs=1e-5)
    # On the first step the policy is the one that sampled the stage: every ratio is 1 and nothing is clipped.
    assert steps[0]["clip_fraction"] == 0.0
    assert any(step["clip_fraction"] > 0 for step in steps[1:])
    # The sampling log-probs in the stage file are the initial policy's, at the sampling temperature.
    rows, candidates = read_stage(args, 0), recorded[0]
    assert rows["old_log_probs"] == candidates["old_log_probs"]
    for prompt_ids, completion_ids, old in zip(
        candidates["prompt_ids"], candidates["completion_ids"], candidates["old_log_probs"]
    ):
        batch = {
            "input_ids": torch.tensor([prompt_ids + completion_ids]),
            "attention_mask": torch.ones(1, len(prompt_ids) + len(completion_ids), dtype=torch.long),
            "labels": torch.tensor([[-100] * len(prompt_ids) + completion_ids]),
        }
        with torch.no_grad():
            expected, _ = completion_token_log_probs(initial, batch, args.temperature)
        assert old == pytest.approx(expected[0, len(prompt_ids) - 1 :].tolist(), abs=1e-5)
    record = next(r for r in trainer.state.log_history if r.get("stage") == 0)
    assert {"entropy", "clip_fraction", "ratio_mean"} <= set(record)


def test_reinforce_rej_keeps_every_candidate_of_the_prompts_whose_rewards_differ(
    make_model, tokenizer, prompts, make_args
):
    args = family_args(make_args, "reinforce_rej", num_stages=2)
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT), apple_or_not, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    steps = spy_on_losses(trainer)
    trainer.train()
    for stage in range(2):
        groups = by_prompt(read_stage(args, stage), 4)
        keep = reference.reinforce_rej_keep([[row["reward"] for row in group] for group in groups])
        assert [[row["selected"] for row in group] for group in groups] == [[kept] * 4 for kept in keep]
        record = next(r for r in trainer.state.log_history if r.get("stage") == stage)
        assert record["groups_dropped"] == pytest.approx(1 - sum(keep) / len(keep))
    assert all(step["loss"] == pytest.approx(step["expected"], abs=1e-5) for step in steps)


def test_the_kl_loss_to_the_initial_model_joins_the_clipped_loss(make_model, tokenizer, prompts, make_args):
    args = family_args(make_args, "raft++", kl_loss_coef=0.5)
    model = make_model(**NO_DROPOUT)
    initial = copy.deepcopy(model).eval()
    trainer = RAFTTrainer(model, apple_or_not, args=args, train_dataset=prompts, processing_class=tokenizer)
    steps = spy_on_losses(trainer, reference_model=initial)
    trainer.train()
    assert all(step["loss"] == pytest.approx(step["expected"], abs=1e-5) for step in steps)
    assert next(r for r in trainer.state.log_history if r.get("stage") == 0)["kl_loss"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(loss_type="ppo"), "loss_type must be"),
        (dict(loss_type="reinforce_rej", kept_per_prompt=2), "keeps every candidate"),
        (dict(loss_type="reinforce_rej", ranking="global"), "keeps every candidate"),
        (dict(epsilon=-0.1), "epsilon must be in"),
        (dict(kl_loss_coef=-1.0), "kl_loss_coef must be >= 0"),
        (dict(loss_type="raft++", advantage_baseline="group_mean"), "set loss_type='reinforce_rej'"),
        (dict(loss_type="reinforce_rej", advantage_baseline="mean"), "advantage_baseline must be"),
    ],
)
def test_bad_loss_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        RAFTConfig(output_dir=str(tmp_path), **overrides)


def test_reinforce_rej_with_a_threshold_trains_accepted_samples_up_and_rejected_ones_down(
    make_model, tokenizer, prompts, make_args
):
    def says_apple(completions, **kwargs):  # a 0/1 reward, as verifiable rewards usually are
        return [float("apple" in text.split()) for text in completions]

    args = family_args(make_args, "reinforce_rej", reward_threshold=0.5)
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT), says_apple, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    advantages = record_advantages(trainer)
    trainer.train()
    kept = [row["reward"] for row in read_stage(args, 0) if row["selected"]]
    assert kept and set(kept) == {0.0, 1.0}  # mixed groups only, right and wrong answers both kept
    assert set(advantages) == {-1.0, 1.0}


@pytest.mark.parametrize("threshold", [0.5, None])
def test_reinforce_rej_with_the_group_mean_baseline_trains_the_references_centred_advantages(
    make_model, tokenizer, prompts, make_args, threshold
):
    def apple_count(completions, **kwargs):  # graded without a threshold, 0/1 through it
        return [float(text.split().count("apple")) for text in completions]

    args = family_args(make_args, "reinforce_rej", reward_threshold=threshold, advantage_baseline="group_mean")
    args.per_device_train_batch_size, args.epochs_per_stage = 64, 1  # one step: every kept sample once
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT), apple_count, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    advantages = record_advantages(trainer)
    trainer.train()
    groups = [[row["reward"] for row in group if row["selected"]] for group in by_prompt(read_stage(args, 0), 4)]
    groups = [group for group in groups if group]
    assert groups  # some prompts had answers with different rewards
    expected = reference.reinforce_rej_advantages(groups, threshold, baseline="group_mean")
    assert sorted(advantages) == pytest.approx(sorted(value for group in expected for value in group))
    assert sum(advantages) == pytest.approx(0.0, abs=1e-6)  # centred within every prompt
    plain = reference.reinforce_rej_advantages(groups, threshold)
    assert sorted(advantages) != pytest.approx(sorted(value for group in plain for value in group))


def test_with_gradient_accumulation_the_micro_batch_losses_add_up_to_the_step_token_mean(
    make_model, tokenizer, prompts, make_args
):
    # Each micro-batch's loss is its token sum over the tokens of the whole optimizer step, as the Trainer's
    # num_items_in_batch makes a model's own loss: the two micro-batches add up to the reference loss of all four.
    args = family_args(make_args, "raft++", gradient_accumulation_steps=2)
    args.per_device_train_batch_size = 2  # 2 micro-batches of 2 make each step's batch of 4
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT), apple_or_not, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    steps = spy_on_losses(trainer)
    trainer.train()
    assert len(steps) == 6
    for first, second in zip(steps[::2], steps[1::2]):
        tokens = [len(row) for row in first["old"] + second["old"]]
        first_tokens = sum(len(row) for row in first["old"])
        expected = (first["expected"] * first_tokens + second["expected"] * (sum(tokens) - first_tokens)) / sum(tokens)
        assert first["loss"] + second["loss"] == pytest.approx(expected, abs=1e-5)
