"""Scoring candidates with reward functions (TRL's convention) and the stage file's reward columns."""

import math

import numpy as np
import torch

from ..memory import visiting
from ..rewards import RewardFunction, reward_function_name


def reward_weight_tensor(reward_weights: list[float] | None, num_functions: int) -> torch.Tensor:
    """The weight of each reward function (all 1 when `reward_weights` is None), checked against their number."""
    if reward_weights is not None and len(reward_weights) != num_functions:
        raise ValueError(
            f"reward_weights has {len(reward_weights)} entries for {num_functions} reward functions: "
            "give one weight per reward function."
        )
    return torch.tensor(reward_weights or [1.0] * num_functions, dtype=torch.float64)


def score_candidates(
    reward_funcs: list[RewardFunction], weights: torch.Tensor, kwargs: dict, device, offload: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate's reward [N] (the weighted sum over reward functions) and the per-function rewards [N, F];
    every function is called with `kwargs` (TRL's keywords, one list entry per candidate).

    As in TRL, a function returning None/NaN for a candidate leaves it out of that candidate's sum; a candidate no
    function rewards gets NaN (no reward). With `offload`, a reward model visits `device` only while it scores.
    """
    num_candidates = len(kwargs["prompts"])
    rewards_per_func = torch.full((num_candidates, len(reward_funcs)), torch.nan, dtype=torch.float64)
    for column, function in enumerate(reward_funcs):
        with visiting(function, device, offload):
            values = list(function(**kwargs))
        if len(values) != num_candidates or not all(_is_number_or_none(v) for v in values):
            raise ValueError(
                f"reward function {reward_function_name(function)!r} returned {_describe(values)}; expected a list "
                f"of {num_candidates} floats (one per candidate, None for no reward)."
            )
        rewards_per_func[:, column] = torch.tensor(
            [torch.nan if v is None else float(v) for v in values], dtype=torch.float64
        )
    rewards = (rewards_per_func * weights).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards, rewards_per_func


def reward_columns(rewards: torch.Tensor, rewards_per_func: torch.Tensor, names: list[str]) -> dict[str, list]:
    """A stage file's reward columns: `reward`, and `reward_<name>` per function when there are several."""
    columns = {"reward": _nan_to_none(rewards)}
    if len(names) > 1:
        for name, column in zip(names, rewards_per_func.T):
            columns[f"reward_{name}"] = _nan_to_none(column)
    return columns


def _nan_to_none(values: torch.Tensor) -> list:
    return [None if math.isnan(value) else value for value in values.tolist()]


def _is_number_or_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.number))


def _describe(values: list) -> str:
    shown = repr(values[:4])[:-1] + (", ...]" if len(values) > 4 else "]")
    return f"{len(values)} values {shown}"
