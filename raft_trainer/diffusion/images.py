"""Image files of a diffusion stage: a grid of the kept images with their rewards as captions, and images as PNG
bytes for the stage in flight."""

import io
import math

from PIL import Image, ImageDraw

from ..files import atomic_path
from ..stages import Candidates

CAPTION_HEIGHT = 14


class ImageCandidates(Candidates, total=False):
    """DiffusionRAFTTrainer's candidates: the cycle's columns and the image. The stage file takes `prompt_index` and
    `prompt`, and `image` as the path of its PNG (`write_stage_media`)."""

    image: list[Image.Image]  # generation: the sampled image (PNG bytes in the in-flight files)


def save_image_grid(images: list[Image.Image], captions: list[str], path: str, columns: int = 8) -> None:
    """Tile `images` (same size) in rows of `columns`, each with its caption below, into one PNG, atomically."""
    if not images:
        return
    width, height = images[0].size
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * width, rows * (height + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, caption) in enumerate(zip(images, captions)):
        left, top = (index % columns) * width, (index // columns) * (height + CAPTION_HEIGHT)
        grid.paste(image.convert("RGB"), (left, top))
        draw.text((left + 2, top + height + 1), caption, fill="black")
    with atomic_path(path) as partial:
        grid.save(partial, format="PNG")


def png_bytes(image: Image.Image) -> bytes:
    """`image` as PNG bytes: lossless, and a type `torch.load(weights_only=True)` reads back."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def from_png_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
