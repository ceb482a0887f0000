"""Image rewards in the trainer's reward-function convention (called with `images=`): the LAION aesthetic predictor,
the OpenCLIP text-image score, the human-preference scores HPSv2 / HPSv2.1 and PickScore, and DDPO's JPEG
compressibility / incompressibility (nothing to download)."""

from .aesthetic import AestheticHead, AestheticScorer
from .clip_score import CLIPScore
from .hps import HPSv2
from .jpeg import JPEGCompressibility, JPEGIncompressibility
from .pickscore import PickScore

__all__ = [
    "AestheticHead",
    "AestheticScorer",
    "CLIPScore",
    "HPSv2",
    "JPEGCompressibility",
    "JPEGIncompressibility",
    "PickScore",
]
