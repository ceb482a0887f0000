"""The RAFT family where a careful reviewer looks: the update does not depend on how a step is split into
micro-batches, the sampling log-probs are those of the trained tokens with no dropout in between, Reinforce-Rej
judges groups by what its advantages will be, and a stage that keeps nothing is passed over."""

import copy
import logging
import math

import pytest
import torch

from raft_trainer import RAFTConfig, RAFTTrainer, reference
from raft_trainer.stages import selection

from .helpers import NO_DROPOUT, Crash, CrashAtStep, by_prompt, read_stage, record_advantages


def scattered(completion_ids, **kwargs):
    """A deterministic reward that looks random, so that the kept samples have lengths of all sorts."""
    return [(sum(ids) * 7919 + len(ids) * 31) % 101 / 101 for ids in completion_ids]


def short_first(completion_ids, **kwargs):
    """Shorter completions first, ties broken by `scattered`: kept samples of unequal lengths."""
    return [-len(ids) + score for ids, score in zip(completion_ids, scattered(completion_ids))]


def step_arguments(make_args, loss_type, batch, accumulation, **overrides):
    """One optimizer step of plain SGD on a stage's whole kept set (best-of-4 keeps 4 samples of the 4 prompts,
    Reinforce-Rej all 16 here), `batch` x `accumulation` of them: the update is -lr times the gradient."""
    kept = 16 if loss_type == "reinforce_rej" else 4
    return make_args(
        loss_type=loss_type,
        num_generations=4,
        samples_per_stage=kept,
        per_device_train_batch_size=batch * kept // 4,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        **overrides,
    )


def one_step_update(make_model, tokenizer, prompts, args) -> tuple[torch.Tensor, RAFTTrainer]:
    model = make_model(**NO_DROPOUT)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = RAFTTrainer(model, short_first, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return after - before, trainer


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "loss_type, overrides",
    [("raft", {}), ("raft", {"kl_loss_coef": 1e-12}), ("raft++", {}), ("reinforce_rej", {})],
    ids=["raft", "raft-kl", "raft++", "reinforce_rej"],
)
def test_gradient_accumulation_does_not_change_the_update(
    make_model, tokenizer, prompts, make_args, loss_type, overrides
):
    whole, trainer = one_step_update(
        make_model, tokenizer, prompts, step_arguments(make_args, loss_type, 4, 1, **overrides)
    )
    kept = [row["completion_length"] for row in read_stage(trainer.args, 0) if row["selected"]]
    assert len(kept) == trainer.args.samples_per_stage  # the whole kept set is the step's batch
    assert len(set(kept)) > 1  # micro-batches of unequal token counts, where a per-micro-batch mean would differ
    split, _ = one_step_update(
        make_model,
        tokenizer,
        prompts,
        step_arguments(make_args, loss_type, 2, 2, output_dir=trainer.args.output_dir + "-ga", **overrides),
    )
    assert whole.norm() > 0
    assert relative_difference(split, whole) < 1e-5


def test_the_first_step_of_raft_plus_plus_and_of_raft_with_a_tiny_kl_is_the_sft_step(
    make_model, tokenizer, prompts, make_args
):
    # docs/cycle.md: on a stage's first step the ratio is 1 and RAFT++'s gradient is the SFT gradient; the KL loss
    # at a coefficient of 1e-12 adds nothing measurable. Both under gradient accumulation too.
    sft, trainer = one_step_update(make_model, tokenizer, prompts, step_arguments(make_args, "raft", 2, 2))
    for loss_type, overrides in (("raft++", {}), ("raft", {"kl_loss_coef": 1e-12})):
        args = step_arguments(
            make_args, loss_type, 2, 2, output_dir=f"{trainer.args.output_dir}-{loss_type}", **overrides
        )
        update, _ = one_step_update(make_model, tokenizer, prompts, args)
        assert relative_difference(update, sft) < 1e-5, loss_type


def test_reinforce_rej_with_a_threshold_judges_groups_by_accepted_against_rejected(
    make_model, tokenizer, prompts, make_args
):
    def graded(prompts, completions, **kwargs):
        # "say ..." prompts: every sample passes 0.5, each with its own graded reward (no contrast in verdicts);
        # "tell ..." prompts: passing and failing samples alternate.
        rewards = []
        for i, prompt in enumerate(prompts):
            rewards.append(0.6 + 0.01 * i if prompt.startswith("say") else (0.9 if i % 2 else 0.1))
        return rewards

    args = make_args(loss_type="reinforce_rej", reward_threshold=0.5, num_generations=4, samples_per_stage=8)
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT), graded, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    advantages = record_advantages(trainer)
    trainer.train()
    for group in by_prompt(read_stage(args, 0), 4):
        kept = [row["selected"] for row in group]
        assert kept == [not group[0]["prompt"].startswith("say")] * 4, group[0]["prompt"]
    assert set(advantages) == {-1.0, 1.0}


def test_mixed_groups_match_the_reference_with_and_without_a_threshold():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(40, generator=generator).round(decimals=1)
    rewards[::7] = torch.nan
    groups = torch.arange(40) // 5
    for threshold in (None, 0.5):
        kept = selection.mixed_groups(rewards, groups, threshold)
        keep = reference.reinforce_rej_keep(rewards.view(8, 5).tolist(), threshold)
        expected = torch.tensor(keep).repeat_interleave(5) & ~torch.isnan(rewards)
        assert kept.tolist() == expected.tolist()
    # all pass 0.5 with graded rewards: kept without a threshold, dropped with one
    assert selection.mixed_groups(torch.tensor([0.6, 0.7]), torch.tensor([0, 0])).all()
    assert not selection.mixed_groups(torch.tensor([0.6, 0.7]), torch.tensor([0, 0]), 0.5).any()


def all_right(completions, **kwargs):
    return [1.0] * len(completions)


def test_a_stage_that_keeps_nothing_is_passed_over_without_an_update(
    make_model, tokenizer, prompts, make_args, caplog
):
    # Every sample right: Reinforce-Rej has no group with contrast, in either stage.
    args = make_args(loss_type="reinforce_rej", reward_threshold=1.0, num_stages=2, logging_steps=1)
    model = make_model(**NO_DROPOUT)
    before = copy.deepcopy(model.state_dict())
    trainer = RAFTTrainer(model, all_right, args=args, train_dataset=prompts, processing_class=tokenizer)
    with caplog.at_level(logging.WARNING, logger="raft_trainer"):
        trainer.train()
    assert trainer.state.global_step == 2 * trainer.optimizer_steps_per_stage()  # the schedule as planned
    assert trainer.lr_scheduler.last_epoch == trainer.state.global_step
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)
    records = [r for r in trainer.state.log_history if "num_kept" in r]
    assert [r["num_kept"] for r in records] == [0, 0]
    passed_over = [r.getMessage() for r in caplog.records if "passed over" in r.getMessage()]
    assert len(passed_over) == 2 and "16 of 16 candidates got a reward, 16 were accepted" in passed_over[0]
    assert "none of the 4 prompts had accepted and rejected samples" in passed_over[0]


def test_max_empty_stages_in_a_row_stop_the_run_with_the_counts(make_model, tokenizer, prompts, make_args):
    def all_wrong(completions, **kwargs):
        return [0.0] * len(completions)

    args = make_args(reward_threshold=1.0, num_stages=4, max_empty_stages=2)
    trainer = RAFTTrainer(make_model(), all_wrong, args=args, train_dataset=prompts, processing_class=tokenizer)
    with pytest.raises(RuntimeError, match=r"stage 1 kept no candidate.*max_empty_stages=2.*0 were accepted"):
        trainer.train()


def test_a_run_goes_on_after_a_passed_over_stage(make_model, tokenizer, prompts, make_args):
    # Stage 0: nothing reaches the threshold; stage 1: the reward is reachable and the model trains.
    def reachable_from_stage_one(completions, trainer_state, **kwargs):
        return [float(trainer_state.global_step > 0)] * len(completions)

    args = make_args(reward_threshold=1.0, num_stages=2)
    model = make_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = RAFTTrainer(
        model, reachable_from_stage_one, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()
    records = [r for r in trainer.state.log_history if "num_kept" in r]
    assert [r["num_kept"] for r in records] == [0, 4]
    assert not torch.equal(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]), before)


def test_the_sampling_log_probs_are_the_filtered_completions(make_model, tokenizer, prompts, make_args):
    # The filter replaces every completion: the old log-probs must be those of the new tokens, so the first
    # step's ratio is exactly 1.
    def cleaned(completions, **kwargs):
        return ["apple banana" if i % 2 else "dog" for i in range(len(completions))]

    args = make_args(loss_type="raft++", logging_strategy="steps", logging_steps=1)
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT),
        scattered,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        sample_filter=cleaned,
    )
    trainer.train()
    rows = read_stage(args, 0)
    assert set(rows["completion"]) == {"apple banana", "dog"}
    assert [len(old) for old in rows["old_log_probs"]] == rows["completion_length"]
    first_step = next(r for r in trainer.state.log_history if "ratio_mean" in r)
    assert first_step["ratio_mean"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["raft++", "reinforce_rej"])
def test_dropout_is_off_by_default_for_the_clipped_losses(make_model, tokenizer, prompts, make_args, loss_type):
    model = make_model(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    args = make_args(loss_type=loss_type, logging_strategy="steps", logging_steps=1, samples_per_stage=16)
    trainer = RAFTTrainer(model, scattered, args=args, train_dataset=prompts, processing_class=tokenizer)
    assert all(module.p == 0 for module in trainer.model.modules() if isinstance(module, torch.nn.Dropout))
    trainer.train()
    first_step = next(r for r in trainer.state.log_history if "ratio_mean" in r)
    assert first_step["ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_dropout_stays_for_raft_unless_asked(make_model, tokenizer, prompts, make_args):
    for disable, expected in ((None, 0.3), (True, 0.0)):
        trainer = RAFTTrainer(
            make_model(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3),
            scattered,
            args=make_args(disable_dropout=disable),
            train_dataset=prompts,
            processing_class=tokenizer,
        )
        assert {m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)} == {expected}


def test_dual_clip_reaches_the_loss(make_model, tokenizer, prompts, make_args):
    # With a large learning rate later steps move the ratio far; the trainer's loss must be the reference's with
    # the dual clip at every step.
    args = make_args(
        loss_type="reinforce_rej", dual_clip=1.5, epochs_per_stage=3, learning_rate=5e-2, samples_per_stage=8
    )
    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT), scattered, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    checked = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *rest, **kwargs):
        batch = {name: tensor.clone() for name, tensor in inputs.items()}
        loss = compute_loss(model, inputs, *rest, **kwargs)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            log_probs = torch.log_softmax(logits.double() / args.temperature, -1)
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        new = [lp.gather(-1, lb.clamp(min=0)[:, None])[:, 0][m].tolist() for lp, lb, m in zip(log_probs, labels, mask)]
        old = [row[1:][m].tolist() for row, m in zip(batch["old_log_probs"], mask)]
        expected, _, _ = reference.clipped_policy_loss(
            new, old, batch["advantages"].tolist(), args.epsilon, args.epsilon, dual_clip=1.5
        )
        checked.append((loss.item(), expected))
        return loss

    trainer.compute_loss = spy
    trainer.train()
    assert checked and all(loss == pytest.approx(expected, abs=1e-4) for loss, expected in checked)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(epsilon=1.5), "epsilon must be in \\[0, 1\\)"),
        (dict(reward_threshold=math.nan), "reward_threshold must be a finite number"),
        (dict(loss_type="reinforce_rej", beta=0.1), "beta=0.1"),
        (dict(loss_type="reinforce_rej", num_generations=1), "num_generations >= 2"),
        (dict(dual_clip=1.0), "dual_clip must be > 1"),
        (dict(max_empty_stages=0), "max_empty_stages must be >= 1"),
    ],
)
def test_nonsense_family_settings_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        RAFTConfig(output_dir=str(tmp_path), **overrides)


def test_kl_ranking_reads_log_probs_a_training_batch_at_a_time(make_model, tokenizer, prompts, make_args):
    # Full-vocabulary logits for generation_batch_size sequences at once is what the training batch size avoids.
    model = make_model()
    rows = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    args = make_args(beta=0.1, generation_batch_size=64, per_device_train_batch_size=2)
    trainer = RAFTTrainer(model, scattered, args=args, train_dataset=prompts, processing_class=tokenizer)
    rows.clear()
    trainer.ranking_scores(
        {"prompt_ids": [[1, 2]] * 16, "completion_ids": [[3, 4, 5]] * 16}, torch.zeros(16, dtype=torch.float64)
    )
    assert rows and max(rows) <= 2


def test_an_ended_and_a_truncated_completion_of_the_same_text_are_distinct(make_model, tokenizer, prompts, make_args):
    trainer = RAFTTrainer(
        make_model(),
        scattered,
        args=make_args(kept_per_prompt=2),
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    keys = trainer.selection_rule.duplicate_keys(
        {"completion": ["apple", "apple", "apple"], "truncated": [False, True, False]}
    )
    assert keys[0] == keys[2] and keys[0] != keys[1]


def reachable_from_stage_two(completions, trainer_state, **kwargs):
    """Stages 0 and 1 (4 steps each) keep nothing at reward_threshold=1; from stage 2 every sample passes."""
    return [float(trainer_state.global_step >= 8)] * len(completions)


def passing_trainer(make_model, tokenizer, prompts, make_args, output_dir, callbacks=None, **overrides):
    args = make_args(
        output_dir=str(output_dir),
        reward_threshold=1.0,
        num_stages=3,
        epochs_per_stage=2,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,
        lr_scheduler_type="linear",
        **overrides,
    )
    return RAFTTrainer(
        make_model(**NO_DROPOUT),
        reachable_from_stage_two,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def test_a_run_resumed_inside_a_passed_over_stage_ends_as_the_uninterrupted_one(
    make_model, tokenizer, prompts, make_args, tmp_path
):
    reference_run = passing_trainer(make_model, tokenizer, prompts, make_args, tmp_path / "reference")
    reference_run.train()
    assert [r["num_kept"] for r in reference_run.state.log_history if "num_kept" in r] == [0, 0, 4]

    output_dir = tmp_path / "crashed"
    with pytest.raises(Crash):  # inside stage 1, itself passed over, after stage 0 was
        passing_trainer(make_model, tokenizer, prompts, make_args, output_dir, [CrashAtStep(7)]).train()
    resumed = passing_trainer(make_model, tokenizer, prompts, make_args, output_dir)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == reference_run.state.global_step == 12
    for (name, expected), parameter in zip(
        reference_run.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        torch.testing.assert_close(parameter, expected, msg=name)

    # The empty stages before a resume count too: with max_empty_stages=2 the resumed run stops at stage 1.
    output_dir = tmp_path / "stopped"
    with pytest.raises(Crash):
        passing_trainer(
            make_model, tokenizer, prompts, make_args, output_dir, [CrashAtStep(4)], max_empty_stages=2
        ).train()
    again = passing_trainer(make_model, tokenizer, prompts, make_args, output_dir, max_empty_stages=2)
    with pytest.raises(RuntimeError, match="stage 1 kept no candidate, the last of 2 such stages in a row"):
        again.train(resume_from_checkpoint=True)


def test_a_resume_logged_by_steps_counts_each_empty_stage_once(make_model, tokenizer, prompts, make_args, tmp_path):
    # With a log record every step, a stage's record is logged before its mid-stage checkpoint: the resumed run must
    # neither log it again nor count the stage twice (here it would reach max_empty_stages=3 at stage 1).
    logged = dict(logging_strategy="steps", logging_steps=1, max_empty_stages=3)
    output_dir = tmp_path / "by-steps"
    with pytest.raises(Crash):
        passing_trainer(make_model, tokenizer, prompts, make_args, output_dir, [CrashAtStep(7)], **logged).train()
    resumed = passing_trainer(make_model, tokenizer, prompts, make_args, output_dir, **logged)
    resumed.train(resume_from_checkpoint=True)
    records = [(r["stage"], r["num_kept"]) for r in resumed.state.log_history if "num_kept" in r]
    assert records == [(0, 0), (1, 0), (2, 4)]


def test_the_adapters_dropout_is_off_too(make_model, tokenizer, prompts, make_args):
    from peft import LoraConfig

    trainer = RAFTTrainer(
        make_model(**NO_DROPOUT),
        scattered,
        args=make_args(loss_type="raft++"),
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=2, lora_dropout=0.1, target_modules=["c_attn"]),
    )
    dropouts = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0 for m in dropouts)


def test_a_stage_is_not_passed_over_where_steps_without_gradients_cannot_be_made(
    make_model, tokenizer, prompts, make_args
):
    # fp16's gradient scaler (and DeepSpeed) need gradients in every optimizer step: a clear error, not a crash
    # deep in the scaler. No GPU here, so the scaler is stood in for.
    from raft_trainer.stages import Pool, Selection

    trainer = RAFTTrainer(
        make_model(),
        all_right,
        args=make_args(reward_threshold=2.0),
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    trainer.accelerator.scaler = object()
    rewards = torch.ones(4, dtype=torch.float64)
    pool = Pool({"group": [0, 0, 1, 1]}, rewards, rewards[:, None], torch.ones(4, dtype=torch.bool), rewards)
    with pytest.raises(RuntimeError, match="fp16's gradient scaler and DeepSpeed"):
        trainer.pass_over(0, pool, Selection(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)))
