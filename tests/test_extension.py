"""Extending RAFT is shown, not told: a selection rule and a loss of this file's own, through RAFTTrainer's
documented steps (`select`, `training_examples`, `compute_loss`), with no change to the package."""

import numpy as np
import pytest
import torch

from raft_trainer import RAFTTrainer, losses
from raft_trainer.stages import Pool, Selection, selection

from .helpers import NO_DROPOUT, by_prompt, read_stage, share_of_apple


class BestTwoRewardWeighted(RAFTTrainer):
    """Keeps the best two distinct candidates of every prompt, and trains on them with the SFT loss weighted by their
    reward (each sequence's token losses times its reward, token-mean over the step)."""

    def select(self, pool: Pool) -> Selection:
        kept = selection.accept_per_group(
            pool.rewards, pool.groups, per_group=2, duplicate_keys=self.selection_rule.duplicate_keys(pool.candidates)
        )
        return Selection(kept)

    def training_examples(self, candidates, kept_indices):
        examples = super().training_examples(candidates, kept_indices)
        for example, i in zip(examples, kept_indices):
            example["advantages"] = candidates["reward"][i]  # the collator batches it as one value per sequence
        return examples

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("advantages")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        labels = inputs["labels"][:, 1:]
        log_probs = losses.selected_token_log_probs(outputs.logits[:, :-1], labels)
        loss = losses.token_mean(-log_probs * weights[:, None], labels != -100, num_items_in_batch)
        self.steps.append((inputs, weights, loss.item()))
        return (loss, outputs) if return_outputs else loss


def test_a_selection_rule_and_a_loss_of_ones_own_train_through_raft_trainer(make_model, tokenizer, prompts, make_args):
    args = make_args(num_generations=4, samples_per_stage=8, per_device_train_batch_size=8, learning_rate=1e-2)
    model = make_model(**NO_DROPOUT)
    trainer = BestTwoRewardWeighted(
        model, share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.steps = []
    trainer.train()

    # The rule: per prompt, the two best rewards among distinct completions (earliest first on ties).
    for group in by_prompt(read_stage(args, 0), 4):
        kept = [row for row in group if row["selected"]]
        distinct = {}
        for row in sorted(group, key=lambda row: -row["reward"]):
            distinct.setdefault(row["completion"], row)
        best_two = sorted(distinct.values(), key=lambda row: -row["reward"])[:2]
        assert len(kept) == len(best_two)
        assert sorted(row["reward"] for row in kept) == sorted(row["reward"] for row in best_two)

    # The loss: every step is the reward-weighted token mean, recomputed here in numpy from the same batch.
    assert len(trainer.steps) == 1
    inputs, weights, loss = trainer.steps[0]
    with torch.no_grad():  # the weights have moved since; recompute with the start model instead
        start = make_model(**NO_DROPOUT)
        logits = start(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
    log_softmax = torch.log_softmax(logits.double(), dim=-1).numpy()
    labels = inputs["labels"][:, 1:].numpy()
    terms = [
        -weight * log_softmax[row, position, label]
        for row, weight in enumerate(weights.tolist())
        for position, label in enumerate(labels[row])
        if label != -100
    ]
    assert loss == pytest.approx(float(np.mean(terms)), abs=1e-5)
    kept_rewards = sorted(row["reward"] for row in read_stage(args, 0) if row["selected"])
    assert sorted(weights.tolist()) == pytest.approx(kept_rewards)  # one weight per kept sample, its reward
