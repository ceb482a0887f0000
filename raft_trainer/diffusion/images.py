"""Image files of a diffusion stage: a grid of the kept images with their rewards as captions."""

import math

from PIL import Image, ImageDraw

from ..files import atomic_path

CAPTION_HEIGHT = 14


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
