"""RAFT (Reward rAnked FineTuning, Dong et al., TMLR 2023) on the Hugging Face stack."""

import importlib

from .raft_config import RAFTConfig
from .raft_trainer import RAFTTrainer
from .rewards import RewardModel
from .stage_config import StageConfig
from .stage_trainer import StageTrainer

# The diffusion side needs diffusers and open_clip: imported on first use, so that language-model runs start
# without them.
_DIFFUSION = {"DiffusionRAFTConfig": ".diffusion_raft_config", "DiffusionRAFTTrainer": ".diffusion_raft_trainer"}


def __getattr__(name: str):
    if name in _DIFFUSION:
        return getattr(importlib.import_module(_DIFFUSION[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DiffusionRAFTConfig",
    "DiffusionRAFTTrainer",
    "RAFTConfig",
    "RAFTTrainer",
    "RewardModel",
    "StageConfig",
    "StageTrainer",
]
__version__ = "0.1.0"
