"""The shared stage cycle as functions, used by every trainer:

    draw prompts (prompts.py) -> score candidates (scoring.py) -> select the kept ones (selection.py)
    -> write the stage file (stage_files.py) -> serve the kept set as training batches (batches.py)

Nothing here holds a model or knows a modality; the trainers supply generation and the loss.
"""

from dataclasses import dataclass

import torch

# A stage's candidates as per-candidate columns. `generate` returns them with `prompt_position` (which of the prompts
# it was given each answers); the cycle then replaces it with `group`, the prompt's place in the stage's draw.
Candidates = dict[str, list]


@dataclass
class Draw:
    """One process's share of a stage's draw of prompts."""

    prompt_indices: list[int]  # rows of the training dataset
    positions: list[int]  # their places in the stage's whole draw (a prompt drawn twice has two)
    prompts: list
    columns: dict[str, list]  # the dataset's other columns, one value per prompt, for the reward functions


@dataclass
class Pool:
    """A stage's scored candidates, gathered from every process: what selection chooses from."""

    candidates: Candidates
    rewards: torch.Tensor  # [N], NaN where there is none (or the sample filter dropped the candidate)
    rewards_per_func: torch.Tensor  # [N, reward functions]
    kept_by_filter: torch.Tensor  # [N] bool
    scores: torch.Tensor  # [N] what candidates are ranked by: the reward, or a trainer's penalised score

    TENSORS = ("rewards", "rewards_per_func", "kept_by_filter", "scores")

    @property
    def groups(self) -> torch.Tensor:
        """[N] each candidate's draw of a prompt; candidates ranked together share it."""
        return torch.tensor(self.candidates["group"])


@dataclass
class Selection:
    """What a stage keeps, as decided by the trainer's `select`, and what its loss needs to know of it."""

    kept: torch.Tensor  # [N] bool
    accepted: torch.Tensor | None = None  # [N] bool, when the rule rejects candidates on their own (pass_rate)
    rule: str = ""  # what a candidate had to meet, said when a stage keeps nothing
