"""Image rewards in the trainer's reward-function convention (called with `images=`): the LAION aesthetic predictor,
the OpenCLIP text-image score, and DDPO's JPEG compressibility / incompressibility (nothing to download)."""

from .aesthetic import AestheticHead, AestheticScorer
from .clip_score import CLIPScore
from .jpeg import JPEGCompressibility, JPEGIncompressibility

__all__ = ["AestheticHead", "AestheticScorer", "CLIPScore", "JPEGCompressibility", "JPEGIncompressibility"]
