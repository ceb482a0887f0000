"""What the prompt-image rewards share (CLIP score, HPSv2, PickScore): each image scored against its own prompt as a
scale times the cosine of their embeddings, every distinct prompt encoded once."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def parameter_device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where inputs of `module` must go: the device and dtype of its parameters (CPU float32 if it has none)."""
    parameter = next(module.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def normalised_rows(items: list, encode: Callable[[list], torch.Tensor], batch_size: int) -> torch.Tensor:
    """`encode` applied to `items` `batch_size` at a time: the rows L2-normalised, in float32, one per item."""
    rows = [
        F.normalize(encode(items[start : start + batch_size]).float(), dim=-1)
        for start in range(0, len(items), batch_size)
    ]
    return torch.cat(rows)


class PromptImageSimilarity(nn.Module):
    """A reward of each image against its prompt: `scale()` x cosine(image embedding, prompt embedding).

    Subclasses give `text_embeddings(prompts)` and `image_embeddings(images)` (L2-normalised float32 rows) and the
    scale. Called like any reward function with `images=` (PIL images) and `prompts=` (one per image); other columns
    are ignored. A `torch.nn.Module`, so the trainer moves it with `.to(device)`.
    """

    def scale(self) -> float:
        raise NotImplementedError

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def image_embeddings(self, images: list) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, images: list, prompts: list[str] | None = None, **_) -> list[float]:
        if prompts is None or len(images) != len(prompts):
            got = "no prompts" if prompts is None else f"{len(prompts)} prompts"
            raise ValueError(
                f"{type(self).__name__} needs one prompt per image: got {len(images)} images and {got}; call it with "
                "images=[...] and prompts=[...] of the same length."
            )
        if not images:
            return []
        self.eval()  # a trainer may have switched every module to training mode: no dropout while scoring
        # RAFT samples several images per prompt: encode each distinct prompt once.
        row_of = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
        text = self.text_embeddings(list(row_of))
        rows = torch.tensor([row_of[prompt] for prompt in prompts], device=text.device)
        image = self.image_embeddings(images).to(text.device)
        return (self.scale() * (image * text[rows]).sum(dim=-1)).tolist()
