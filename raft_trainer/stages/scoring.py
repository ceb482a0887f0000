"""Scoring candidates with reward functions (TRL's convention) and the stage file's reward columns."""

import asyncio
import inspect
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

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
    function rewards gets NaN (no reward); async functions (coroutine functions, a remote judge say) run
    concurrently. With `offload`, a reward model visits `device` only while it scores.
    """
    num_candidates = len(kwargs["prompts"])
    rewards_per_func = torch.full((num_candidates, len(reward_funcs)), torch.nan, dtype=torch.float64)
    results = []
    for function in reward_funcs:
        with visiting(function, device, offload):
            results.append(function(**kwargs))
    waiting = [index for index, result in enumerate(results) if inspect.isawaitable(result)]
    for index, values in zip(waiting, run_concurrently([results[index] for index in waiting])):
        results[index] = values
    for column, (function, values) in enumerate(zip(reward_funcs, results)):
        values = list(values)
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


def run_concurrently(awaitables: list) -> list:
    """The results of `awaitables`, run together on an event loop of their own (in a thread when the caller already
    runs one, as a notebook does)."""
    if not awaitables:
        return []

    async def gather():
        return await asyncio.gather(*awaitables)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, gather()).result()


class RewardLog:
    """What reward functions log through TRL's `log_extra` and `log_metric` keywords: extra per-candidate columns
    (for the stage file) and scalar metrics (averaged into the stage's log record)."""

    def __init__(self):
        self.columns: dict[str, list] = {}
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def log_extra(self, column: str, values: list) -> None:
        self.columns.setdefault(column, []).extend(values)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name].append(float(value))

    def take(self, num_candidates: int) -> tuple[list[dict], dict[str, float]]:
        """Each candidate's logged values (one dict per candidate) and each metric's mean since the last take; the
        log is then empty."""
        for column, values in self.columns.items():
            if len(values) != num_candidates:
                raise ValueError(
                    f"log_extra({column!r}, ...) was given {len(values)} values for {num_candidates} candidates: log "
                    "one value per candidate of the call."
                )
        per_candidate = [{column: values[i] for column, values in self.columns.items()} for i in range(num_candidates)]
        metrics = {name: sum(values) / len(values) for name, values in self.metrics.items()}
        self.columns, self.metrics = {}, defaultdict(list)
        return per_candidate, metrics


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
