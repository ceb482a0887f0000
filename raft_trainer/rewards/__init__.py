"""Reward functions.

A reward function follows TRL's convention, so TRL's own (`trl.rewards`) work unchanged: it is called with the
keywords `prompts=`, `completions=`, `completion_ids=` (language models) or `images=` (diffusion), `trainer_state=`
and every other dataset column, one list entry per candidate, and returns one float per candidate (`None` or NaN:
no reward for that candidate).
"""

import importlib
import os
from collections.abc import Callable

from transformers import PreTrainedModel

from .reward_model import RewardModel

RewardFunction = Callable[..., list]


def as_reward_functions(
    reward_fn,
    processing_classes=None,
    show_progress: bool = True,
    batch_size: int = 64,
    trust_remote_code: bool = False,
) -> list[RewardFunction]:
    """Turn what the user gave as `reward_fn` into a list of reward functions.

    Each item may be a callable, a reward-model id or path (loaded as a sequence-classification model with its own
    tokenizer) or a `PreTrainedModel` (its tokenizer from the matching entry of `processing_classes`, or loaded from
    its `name_or_path`); `trust_remote_code` lets a model given by id run the code it ships. Reward models score
    `batch_size` sequences per forward call and show a progress bar while scoring unless `show_progress` is False.
    """
    items = list(reward_fn) if isinstance(reward_fn, (list, tuple)) else [reward_fn]
    if not items:
        raise ValueError("reward_funcs is empty: give a callable, a reward model, a model id, or a list of these.")
    if processing_classes is None or not isinstance(processing_classes, (list, tuple)):
        processing_classes = [processing_classes] * len(items)
    if len(processing_classes) != len(items):
        raise ValueError(
            f"reward_processing_classes has {len(processing_classes)} entries for {len(items)} reward functions: "
            "give one per reward function (None where it needs none)."
        )
    functions = []
    for item, tokenizer in zip(items, processing_classes):
        if isinstance(item, str):
            looks_like_a_path = os.path.isabs(item) or item.startswith((".", "~")) or item.count("/") > 1
            if looks_like_a_path and not os.path.exists(os.path.expanduser(item)):
                raise ValueError(f"reward model {item!r} does not exist: give an existing folder or a Hub id.")
            functions.append(
                RewardModel.from_pretrained(
                    item, batch_size=batch_size, show_progress=show_progress, trust_remote_code=trust_remote_code
                )
            )
        elif isinstance(item, PreTrainedModel):
            functions.append(RewardModel(item, tokenizer, batch_size=batch_size, show_progress=show_progress))
        elif callable(item):
            functions.append(item)
        else:
            raise ValueError(
                "reward_funcs entries must be callables, reward-model ids or PreTrainedModels; "
                f"got {type(item).__name__}."
            )
    return functions


def reward_function_name(function: RewardFunction) -> str:
    return getattr(function, "__name__", None) or type(function).__name__


def lazy_attributes(package: str, modules: dict[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` (PEP 562) for `package`: `name` is imported from the module `modules[name]`
    (relative to `package`) the first time it is asked for."""

    def __getattr__(name: str):
        if name in modules:
            return getattr(importlib.import_module(modules[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


# The image rewards live with the diffusion side (the `diffusion` extra): imported on first use.
IMAGE_REWARDS = (
    "AestheticHead AestheticScorer CLIPScore HPSv2 PickScore JPEGCompressibility JPEGIncompressibility".split()
)
__getattr__ = lazy_attributes(__name__, {name: "..diffusion.rewards" for name in IMAGE_REWARDS})


__all__ = [*IMAGE_REWARDS, "RewardFunction", "RewardModel", "as_reward_functions", "reward_function_name"]


def one_reward_argument(reward_funcs, reward_fn):
    """The trainers' rewards, given as `reward_funcs` (TRL's name) or by the former name `reward_fn`: one of them."""
    if reward_funcs is not None and reward_fn is not None:
        raise ValueError("reward_funcs and reward_fn are the same argument (reward_fn is its former name): give one.")
    if reward_funcs is None and reward_fn is None:
        raise ValueError(
            "reward_funcs is missing: give a reward function, a reward-model id or model, or a list of these."
        )
    return reward_funcs if reward_funcs is not None else reward_fn
