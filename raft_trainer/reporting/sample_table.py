"""The kept samples of a stage as a table, on the console and in the configured trackers (as TRL's GRPO does)."""

import os
import sys

import pandas as pd
from trl.trainer.utils import print_prompt_completions_sample


def report_sample_table(
    table: dict[str, list],
    step: int,
    report_to: list[str],
    num_to_print: int | None,
    image_column: str | None = None,
    image_dir: str = ".",
) -> None:
    """Print the table and log it to Weights & Biases and trackio when they are among `report_to`.

    `table` holds a `prompt` column, a `completion` (or `image_column`: image files, relative to `image_dir`)
    column and reward columns whose names start with `reward`.
    """
    rewards = {name: values for name, values in table.items() if name.startswith("reward")}
    shown = table[image_column] if image_column else table["completion"]
    print_prompt_completions_sample(table["prompt"], shown, rewards, None, step, num_to_print)

    for backend in _tracker_modules(report_to):
        frame = pd.DataFrame(table)
        if image_column:
            frame[image_column] = [backend.Image(os.path.join(image_dir, path)) for path in frame[image_column]]
        backend.log({"stage_samples": backend.Table(dataframe=frame)})


def _tracker_modules(report_to: list[str]) -> list:
    # Only trackers that are already running: the Trainer's integration callbacks start them.
    modules = []
    wandb = sys.modules.get("wandb")
    if "wandb" in report_to and wandb is not None and wandb.run is not None:
        modules.append(wandb)
    trackio = sys.modules.get("trackio")
    if "trackio" in report_to and trackio is not None:
        modules.append(trackio)
    return modules
