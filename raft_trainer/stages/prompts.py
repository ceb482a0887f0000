"""Which prompts a stage draws, how the processes share them, and what a prompt dataset must look like."""

import json
import math
import os

import numpy as np
from datasets import Dataset

from ..files import stage_file_path
from . import Draw


def stage_prompt_indices(stage: int, count: int, dataset_size: int, seed: int, shuffle: bool = True) -> list[int]:
    """The dataset rows stage `stage` draws: positions [stage * count, (stage + 1) * count) of an endless stream that
    walks the dataset in a fresh random order on every pass (in the dataset's own order without `shuffle`). A pure
    function of the stage, so a resumed run draws exactly the prompts the interrupted one would have."""
    orders = {}  # one shuffled order per pass over the dataset that the stage touches
    indices = []
    for position in range(stage * count, (stage + 1) * count):
        dataset_pass, offset = divmod(position, dataset_size)
        if dataset_pass not in orders:
            orders[dataset_pass] = (
                np.random.default_rng([seed, dataset_pass]).permutation(dataset_size)
                if shuffle
                else np.arange(dataset_size)
            )
        indices.append(int(orders[dataset_pass][offset]))
    return indices


def curriculum_prompt_indices(stage: int, count: int, weights: np.ndarray, seed: int) -> list[int]:
    """The dataset rows stage `stage` draws under a curriculum: `count` distinct rows, each drawn with probability
    in proportion to its weight (`settled_prompt_weights`). A pure function of the stage and the weights."""
    rng = np.random.default_rng([seed, stage, len(weights)])
    return [int(i) for i in rng.choice(len(weights), size=count, replace=False, p=weights / weights.sum())]


def settled_prompt_weights(settled: dict[int, bool], dataset_size: int, settled_weight: float) -> np.ndarray:
    """A weight for each dataset row: `settled_weight` for a prompt whose candidates were all accepted or all
    rejected the last time it was drawn (`settled[row]`), 1 for the others and for prompts not drawn yet."""
    weights = np.ones(dataset_size)
    for row, is_settled in settled.items():
        if is_settled:
            weights[row] = settled_weight
    return weights


def settle(settled: dict[int, bool], prompt_indices: list[int], rewards: list[float], threshold: float) -> None:
    """Record in `settled` whether each prompt drawn was settled: all its candidates accepted (reward at least
    `threshold`), or none (a missing reward counts as not accepted). Its last draw replaces earlier ones."""
    accepted: dict[int, set[bool]] = {}
    for row, reward in zip(prompt_indices, rewards, strict=True):
        accepted.setdefault(row, set()).add(not math.isnan(reward) and reward >= threshold)
    settled.update({row: len(outcomes) == 1 for row, outcomes in accepted.items()})


def settled_from_stage_files(output_dir: str, stages: int, threshold: float) -> dict[int, bool]:
    """`settle` over the stage files of stages 0 to `stages - 1`, in order: what a resumed run knew of its prompts."""
    settled: dict[int, bool] = {}
    for stage in range(stages):
        path = stage_file_path(output_dir, stage)
        if not os.path.isfile(path):
            raise ValueError(
                f"{path} is missing: settled_prompt_weight reads the prompts' last outcomes from the stage files of a "
                "resumed run; resume in the output_dir that holds them, or drop settled_prompt_weight."
            )
        with open(path, encoding="utf-8") as file:
            rows = [json.loads(line) for line in file if line.strip()]
        reward = [math.nan if row["reward"] is None else row["reward"] for row in rows]
        settle(settled, [row["prompt_index"] for row in rows], reward, threshold)
    return settled


def draw_prompts(
    stage: int,
    dataset: Dataset,
    count: int,
    seed: int,
    process_index: int,
    num_processes: int,
    shuffle: bool = True,
    weights: np.ndarray | None = None,
) -> Draw:
    """Process `process_index`'s contiguous share of stage `stage`'s draw of `count` prompts from `dataset`, with
    their dataset rows (read once: the prompts and the other columns). The same for a trainer and for the phases.
    With `weights` (a curriculum), the draw is `curriculum_prompt_indices`'."""
    if weights is None:
        stage_indices = stage_prompt_indices(stage, count, len(dataset), seed, shuffle)
    else:
        stage_indices = curriculum_prompt_indices(stage, count, weights, seed)
    positions = contiguous_share(range(len(stage_indices)), process_index, num_processes)
    prompt_indices = [stage_indices[position] for position in positions]
    rows = dataset.select(prompt_indices).to_dict()
    prompts = rows.pop("prompt")
    return Draw(prompt_indices=prompt_indices, positions=positions, prompts=prompts, columns=rows)


def each_prompt_repeated(num_prompts: int, per_prompt: int | list[int]) -> list[int]:
    """The `group` column of `per_prompt` candidates for each of `num_prompts` prompts (or `per_prompt[i]` for
    prompt i), prompt-major."""
    counts = [per_prompt] * num_prompts if isinstance(per_prompt, int) else per_prompt
    return [prompt for prompt, count in zip(range(num_prompts), counts, strict=True) for _ in range(count)]


def contiguous_share(items, process_index: int, num_processes: int):
    """Process `process_index`'s contiguous share of `items`; the shares of all processes, in order, make up
    `items`, and differ in size by at most one."""
    size, extra = divmod(len(items), num_processes)
    start = process_index * size + min(process_index, extra)
    return items[start : start + size + (process_index < extra)]


def validate_prompt_dataset(dataset, name: str = "train_dataset") -> None:
    """Reject a dataset RAFT cannot draw prompts from, before any model is loaded."""
    if dataset is None:
        raise ValueError(f"{name} is required: a datasets.Dataset with a 'prompt' column of prompts to sample.")
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"{name} must be a datasets.Dataset with a 'prompt' column (got {type(dataset).__name__}); "
            "build one with datasets.Dataset.from_dict({'prompt': [...]})."
        )
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"{name} has no 'prompt' column (columns found: {dataset.column_names}); "
            "rename the prompt column with dataset.rename_column(old, 'prompt')."
        )
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: RAFT needs prompts to generate from.")
    first_is_text = isinstance(dataset[0]["prompt"], str)
    for index, prompt in enumerate(dataset["prompt"]):
        is_chat = (
            isinstance(prompt, list)
            and bool(prompt)
            and all(isinstance(message, dict) and {"role", "content"} <= set(message) for message in prompt)
        )
        if not (isinstance(prompt, str) or is_chat) or isinstance(prompt, str) != first_is_text:
            raise ValueError(
                f"{name}['prompt'][{index}] is {prompt!r:.80}: every prompt must be text, or every prompt a "
                "list of chat messages ({'role': ..., 'content': ...})."
            )
