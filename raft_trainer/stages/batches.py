"""The Trainer's view of the stage cycle: an iterable dataset whose every pass is one stage's training batches."""

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

# The key of the batches a stage that kept nothing serves the Trainer in place of training batches: the trainer
# makes its steps without a forward or a gradient, so they change no weight while the schedule goes on.
PASS_OVER = "raft_pass_over"


def pass_over_batch() -> dict[str, torch.Tensor]:
    """A batch that stands for no training example (its one tensor says so to the Trainer's bookkeeping)."""
    return {PASS_OVER: torch.zeros(1, 0, dtype=torch.long)}


class StageBatches(IterableDataset):
    """What the Trainer's train dataloader iterates: each pass runs the stage the Trainer is in (or takes it back from
    the checkpoint a run resumed from) and yields that stage's training batches.

    The stage is read off the Trainer's global step, so a resumed run picks up the stage it stopped in; and since
    this is an iterable dataset served by a plain `DataLoader`, the Trainer's own fast-forward past the batches a
    resumed stage already trained on (accelerate's `skip_first_batches`) works unchanged.
    """

    def __init__(self, trainer):  # a StageTrainer
        self.trainer = trainer

    def __len__(self) -> int:
        return self.trainer.batches_per_stage()

    def __iter__(self) -> Iterator[dict]:
        stage = self.trainer.current_stage()
        examples = self.trainer._stage_examples(stage)
        return itertools.islice(self.trainer._stage_batches(examples, stage), len(self))
