"""RAFT for diffusion models: the stage cycle with images as candidates, and LoRA fine-tuning with the denoising loss.

Installed with the `diffusion` extra (`pip install "raft-trainer[diffusion]"`), which brings diffusers and open_clip.
"""

try:
    import diffusers  # noqa: F401
    import open_clip  # noqa: F401
except ImportError as error:
    raise ImportError(
        f"raft_trainer.diffusion needs diffusers and open_clip, which the plain install leaves out ({error}): "
        'install the diffusion extra with pip install "raft-trainer[diffusion]".'
    ) from error

from .diffusion_raft_config import DiffusionRAFTConfig  # noqa: E402
from .diffusion_raft_trainer import DiffusionRAFTTrainer  # noqa: E402

__all__ = ["DiffusionRAFTConfig", "DiffusionRAFTTrainer"]
