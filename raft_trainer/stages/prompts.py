"""Which prompts a stage draws, how the processes share them, and what a prompt dataset must look like."""

import numpy as np
from datasets import Dataset

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


def draw_prompts(
    stage: int,
    dataset: Dataset,
    count: int,
    seed: int,
    process_index: int,
    num_processes: int,
    shuffle: bool = True,
) -> Draw:
    """Process `process_index`'s contiguous share of stage `stage`'s draw of `count` prompts from `dataset`, with
    their dataset rows (read once: the prompts and the other columns). The same for a trainer and for the phases."""
    stage_indices = stage_prompt_indices(stage, count, len(dataset), seed, shuffle)
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
