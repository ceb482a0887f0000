"""JPEG compressibility and incompressibility: the download-free image rewards of DDPO (Black et al., 2023).

An image's reward is the size of its JPEG encoding at a fixed quality, in kB (1000 bytes): negated for
compressibility (smooth, flat images score higher), as is for incompressibility (busy, detailed ones do). Nothing
is learned or downloaded, so it suits tests and first runs, and it is a quick check that RAFT moves a pipeline.
"""

import io

import numpy as np
import torch
from PIL import Image

DDPO_JPEG_QUALITY = 95  # the quality DDPO's reward encodes at


def as_pil_image(image) -> Image.Image:
    """A PIL image, RGB: as given, or from an HWC uint8 array, or from a CHW float tensor / array in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)  # floats are in [0, 1]
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")


def jpeg_size_kb(image, quality: int = DDPO_JPEG_QUALITY) -> float:
    """The size of `image` encoded as JPEG at `quality`, in kB (1000 bytes)."""
    buffer = io.BytesIO()
    as_pil_image(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JPEGCompressibility:
    """DDPO's JPEG compressibility reward: minus the image's JPEG size in kB at `quality` (95, as DDPO).

    Called like any reward function with `images=` (PIL images, HWC uint8 arrays or CHW float tensors in [0, 1]); the
    other keywords are ignored. `JPEGIncompressibility` is its opposite.
    """

    __name__ = "jpeg_compressibility"
    sign = -1.0

    def __init__(self, quality: int = DDPO_JPEG_QUALITY):
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality must be an int from 1 to 100, PIL scale (got {quality!r}); DDPO uses 95.")
        self.quality = quality

    def __call__(self, images=None, **kwargs) -> list[float]:
        if images is None:
            raise ValueError(f"{self.__name__} scores images: call it with images=[...] (PIL images).")
        return [self.sign * jpeg_size_kb(image, self.quality) for image in images]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.quality})"


class JPEGIncompressibility(JPEGCompressibility):
    """DDPO's JPEG incompressibility reward: the image's JPEG size in kB at `quality` (95, as DDPO)."""

    __name__ = "jpeg_incompressibility"
    sign = 1.0
