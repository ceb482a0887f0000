"""Candidates from a dataset: expert or human completions that are ranked with (or instead of) the model's samples.

A candidate dataset has `prompt` and `completion` columns, as TRL's prompt-completion datasets do: text, or chat
messages with the completion as one assistant message. Its rows are matched to the training prompts by the prompt
itself; a prompt may have any number of completions.
"""

import json
import logging

from datasets import Dataset

logger = logging.getLogger(__name__)


def prompt_key(prompt) -> str:
    """A hashable key of a prompt, text or chat messages."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def completion_text(completion) -> str:
    """The text of a completion: itself, or the content of its one assistant message."""
    return completion if isinstance(completion, str) else completion[0]["content"]


def completions_by_prompt(candidate_dataset, train_dataset: Dataset) -> dict[str, list[str]]:
    """The completion texts of `candidate_dataset`, by prompt key; raises a `ValueError` for a dataset RAFT cannot
    use, or one that shares no prompt with `train_dataset`."""
    if not isinstance(candidate_dataset, Dataset) or not {"prompt", "completion"} <= set(
        candidate_dataset.column_names
    ):
        columns = getattr(candidate_dataset, "column_names", type(candidate_dataset).__name__)
        raise ValueError(
            f"candidate_dataset must be a datasets.Dataset with 'prompt' and 'completion' columns (got {columns}); "
            "build one with datasets.Dataset.from_dict({'prompt': [...], 'completion': [...]})."
        )
    completions = {}
    for index, (prompt, completion) in enumerate(zip(candidate_dataset["prompt"], candidate_dataset["completion"])):
        is_message = (
            isinstance(completion, list)
            and len(completion) == 1
            and isinstance(completion[0], dict)
            and completion[0].get("role") == "assistant"
        )
        if not (isinstance(completion, str) or is_message):
            raise ValueError(
                f"candidate_dataset['completion'][{index}] is {completion!r:.80}: a completion must be text, or a "
                "list of one assistant message ({'role': 'assistant', 'content': ...})."
            )
        completions.setdefault(prompt_key(prompt), []).append(completion_text(completion))
    if not any(prompt_key(prompt) in completions for prompt in train_dataset["prompt"]):
        raise ValueError(
            "no prompt of candidate_dataset is a prompt of train_dataset: its rows are matched to the training "
            "prompts by the prompt itself (the same text, or the same chat messages)."
        )
    return completions


def prompts_with_completions(
    dataset: Dataset, prompt_ids: list[list[int]], completions: dict[str, list[str]]
) -> tuple[Dataset, list[list[int]]]:
    """The prompts of `dataset` (and their token ids) that have completions in `completions`."""
    matched = [i for i, prompt in enumerate(dataset["prompt"]) if prompt_key(prompt) in completions]
    if len(matched) < len(dataset):
        logger.warning(
            "candidate_source='dataset': dropped %d of %d prompts that candidate_dataset has no completion for.",
            len(dataset) - len(matched),
            len(dataset),
        )
    return dataset.select(matched), [prompt_ids[i] for i in matched]
