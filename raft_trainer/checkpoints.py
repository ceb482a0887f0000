"""Which checkpoint a run resumes from: the newest complete one.

The Trainer writes a checkpoint's files one after the other, its `trainer_state.json` last (after the model, the
optimizer, the random states, and the stage's kept set that `StageTrainer` writes first). A process killed while
saving leaves a folder without a readable `trainer_state.json`; resuming passes over it to the one before.
"""

import json
import os
import re

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

TRAINER_STATE = "trainer_state.json"


def is_complete(checkpoint: str) -> bool:
    """Whether `checkpoint` was saved to the end: its Trainer state is there and reads as JSON."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE), encoding="utf-8") as file:
            json.load(file)
    except (OSError, ValueError):
        return False
    return True


def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders in `output_dir`, newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    steps = {}
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = int(match.group(1))
    return sorted(steps, key=steps.get, reverse=True)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint in `output_dir`, or None when there is none."""
    return next((path for path in checkpoint_folders(output_dir) if is_complete(path)), None)
