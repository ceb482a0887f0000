"""RAFT (Reward rAnked FineTuning, Dong et al., TMLR 2023) on the Hugging Face stack."""

from .interruption import TrainingInterrupted
from .raft_config import RAFTConfig
from .raft_trainer import RAFTTrainer
from .rewards import RewardModel, lazy_attributes
from .stage_config import StageConfig
from .stage_trainer import StageTrainer

# The diffusion side needs diffusers and open_clip (the `diffusion` extra): imported on first use.
__getattr__ = lazy_attributes(__name__, {"DiffusionRAFTConfig": ".diffusion", "DiffusionRAFTTrainer": ".diffusion"})


__all__ = [
    "DiffusionRAFTConfig",
    "DiffusionRAFTTrainer",
    "RAFTConfig",
    "RAFTTrainer",
    "RewardModel",
    "StageConfig",
    "StageTrainer",
    "TrainingInterrupted",
]
__version__ = "0.1.0"
