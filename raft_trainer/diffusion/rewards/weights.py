"""Reward-model weights named by a local file, a local folder, or a Hub repo: fetched at run time on the user's
machine (nothing is bundled), and read as tensors only."""

import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download


def weights_file(weights: str | os.PathLike, filename: str) -> Path:
    """`weights` if it is a file, `weights/filename` if it is a folder, else `filename` of the Hub repo `weights`
    (downloaded once into the Hugging Face cache)."""
    path = Path(weights)
    if path.is_dir():
        return path / filename
    if path.is_file():
        return path
    return Path(hf_hub_download(repo_id=str(weights), filename=filename))


def load_tensors(path: str | os.PathLike):
    """A pickled checkpoint read with `weights_only=True` (tensors and plain containers, no code) onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)
