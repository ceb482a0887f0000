"""HPSv2 / HPSv2.1 (Wu et al., 2023): the Human Preference Score, an OpenCLIP ViT-H/14 fine-tuned on human choices
between generated images (HPD v2). The score of an image and its prompt is the dot product of their normalised
OpenCLIP features, as the `hpsv2` package's `score` computes it (no logit scale: values around 0.2 to 0.35).

The `hpsv2` package itself is not a dependency: it pins pytest 7.2 and protobuf < 4 and bundles its own copy of
OpenCLIP. The model is OpenCLIP's own ViT-H-14 with the HPS checkpoint loaded into it.
"""

import os
from collections.abc import Callable

import open_clip
from torch import nn

from ...models import load_tensors, weights_file
from .clip_score import CLIPScore

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def hps_preprocess(image_size: int) -> Callable:
    """HPS's evaluation transform: the longer side resized to `image_size` and the rest padded black (not cropped),
    bicubic, with OpenAI's mean and std (OpenCLIP's defaults)."""
    return open_clip.image_transform(image_size, is_train=False, resize_mode="longest", fill_color=0)


def load_hps_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load an HPS checkpoint (`{"state_dict": ...}`, as `HPS_v2*_compressed.pt` hold, or a bare state dict) into
    `model`, strictly: every weight of the model comes from it."""
    checkpoint = load_tensors(path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this OpenCLIP model ({error}): give an HPS checkpoint "
            f"({', '.join(HPS_FILES.values())} of {HPS_REPO}) with model='ViT-H-14'."
        ) from error


class HPSv2(CLIPScore):
    """The HPSv2 / HPSv2.1 reward: cosine(OpenCLIP image features, text features of the prompt) under the HPS model.

    `checkpoint` is a local file, a folder holding the `version`'s file, or a Hub repo; `version` is `"v2.1"`
    (default, `HPS_v2.1_compressed.pt`) or `"v2.0"` (`HPS_v2_compressed.pt`). `model` is the OpenCLIP architecture
    the checkpoint is loaded into (ViT-H-14, built without pretrained weights; `checkpoint=None` then means
    `xswu/HPSv2`, downloaded on first use), or a built model (anything with `encode_image` and `encode_text`) given
    with its image transform and tokenizer, which takes the checkpoint when one is given and is used as it is
    otherwise. Called like `CLIPScore`, with `images=` and `prompts=`.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        version: str = "v2.1",
        model: str | nn.Module = "ViT-H-14",
        preprocess: Callable | None = None,
        tokenizer: Callable | None = None,
        *,
        batch_size: int = 32,
    ):
        if version not in HPS_FILES:
            raise ValueError(f"version={version!r}: HPS checkpoints are {', '.join(HPS_FILES)}; pick one of them.")
        if isinstance(model, str):
            checkpoint = HPS_REPO if checkpoint is None else checkpoint
            name = model
            model = open_clip.create_model(name, pretrained=None)  # the HPS checkpoint holds every weight
            preprocess = preprocess or hps_preprocess(model.visual.image_size[0])
            tokenizer = tokenizer or open_clip.get_tokenizer(name)
        if checkpoint is not None:
            load_hps_checkpoint(model, weights_file(checkpoint, HPS_FILES[version]))
        super().__init__(model, preprocess=preprocess, tokenizer=tokenizer, batch_size=batch_size)
        self.__name__ = "hpsv2"

    def scale(self) -> float:
        return 1.0  # hpsv2's score is the bare cosine
