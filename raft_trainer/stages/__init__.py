"""The shared stage cycle as functions and types, used by every trainer and by the decoupled phases:

    draw prompts (prompts.py, Draw) -> score candidates (scoring.py) -> gather the pool (Pool)
    -> select the kept ones (selection.py: SelectionRule, Selection) -> serve the kept set as training batches
    (batches.py); the stage file is written by files.py

Nothing here holds a model or knows a modality; the trainers supply generation and the loss.
"""

from dataclasses import dataclass, field
from typing import TypedDict

import torch
from accelerate.utils import gather_object


class Candidates(TypedDict, total=False):
    """A stage's candidates as per-candidate columns (one list entry per candidate): the cycle's own columns here, a
    trainer's in its subclass (`sequences.TextCandidates`, `diffusion.images.ImageCandidates`), each declared with
    who writes it. Which columns a trainer writes is fixed by its configuration, never signalled by a key's
    presence; which of them go to the stage file, its `stage_file_columns` says."""

    prompt_position: list[int]  # `generate`: which of the prompts it was given each candidate answers
    group: list[int]  # `Draw.label`: the prompt's place in the stage's draw; candidates ranked together share it
    prompt_index: list[int]  # `Draw.label`: the training dataset's row of the prompt
    prompt: list  # `Draw.label`: the prompt, as text or chat messages
    reward: list[float]  # `run_stage`, once the pool is scored: the (weighted) reward, NaN where there is none
    logged: list[dict]  # `scored_candidates`: what reward functions logged for it with `log_extra`, by column


@dataclass
class Draw:
    """One process's share of a stage's draw of prompts."""

    prompt_indices: list[int]  # rows of the training dataset
    positions: list[int]  # their places in the stage's whole draw (a prompt drawn twice has two)
    prompts: list
    columns: dict[str, list]  # the dataset's other columns, one value per prompt, for the reward functions

    def label(self, candidates: "Candidates", prompt_of: list[int]) -> dict[str, list]:
        """Name each candidate's prompt (`prompt_of`: its prompt's position in `prompts`) in `candidates`: `group`,
        its draw of a prompt (the place in the stage's draw, unique across processes even when the stage draws a
        prompt twice; candidates ranked together share it), `prompt_index` and `prompt`. Returns the dataset's other
        columns, one value per candidate, for the reward functions."""
        candidates["group"] = [self.positions[i] for i in prompt_of]
        candidates["prompt_index"] = [self.prompt_indices[i] for i in prompt_of]
        candidates["prompt"] = [self.prompts[i] for i in prompt_of]
        return {name: [values[i] for i in prompt_of] for name, values in self.columns.items()}


@dataclass
class Pool:
    """A stage's scored candidates, gathered from every process: what selection chooses from."""

    candidates: Candidates
    rewards: torch.Tensor  # [N], NaN where there is none (or the sample filter dropped the candidate)
    rewards_per_func: torch.Tensor  # [N, reward functions]
    kept_by_filter: torch.Tensor  # [N] bool
    scores: torch.Tensor  # [N] what candidates are ranked by: the reward, or a trainer's penalised score
    reward_metrics: dict[str, float] = field(default_factory=dict)  # the reward functions' `log_metric`s, averaged

    TENSORS = ("rewards", "rewards_per_func", "kept_by_filter", "scores")

    @classmethod
    def gather(cls, scored: dict) -> "Pool":
        """Every process's scored candidates (a dict of `candidates` and the `TENSORS`), in process order, which is
        the order of the stage's draw: the pool every process then selects from alike."""
        tensors = (torch.cat(gather_object([scored[name]])) for name in cls.TENSORS)
        candidates = {name: gather_object(values) for name, values in scored["candidates"].items()}
        return cls(candidates, *tensors, mean_over_processes(scored.get("reward_metrics", {})))

    @property
    def groups(self) -> torch.Tensor:
        """[N] each candidate's draw of a prompt; candidates ranked together share it."""
        return torch.tensor(self.candidates["group"])


def mean_over_processes(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the processes that have it."""
    gathered: dict[str, list[float]] = {}
    for process_metrics in gather_object([metrics]):
        for name, value in process_metrics.items():
            gathered.setdefault(name, []).append(value)
    return {name: sum(values) / len(values) for name, values in gathered.items()}


@dataclass
class Selection:
    """What a stage keeps, as decided by the trainer's `select`, and what its loss needs to know of it."""

    kept: torch.Tensor  # [N] bool
    accepted: torch.Tensor | None = None  # [N] bool, when the rule rejects candidates on their own (pass_rate)
    rule: str = ""  # what a candidate had to meet, said when a stage keeps nothing
