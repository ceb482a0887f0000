from collections.abc import Callable

import open_clip
import torch
from torch import nn

from .similarity import PromptImageSimilarity, normalised_rows, parameter_device_and_dtype


def load_open_clip(name: str, pretrained: str | None) -> tuple[nn.Module, Callable]:
    """Build an OpenCLIP model and its evaluation transform.

    OpenCLIP's plain configs use GELU; weights trained with QuickGELU (OpenAI's among them) only reproduce their
    features with QuickGELU, so it is switched on whenever the pretrained tag says so.
    """
    quick_gelu = bool(pretrained and open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, force_quick_gelu=quick_gelu
    )
    return model, preprocess


def preprocess_batch(images: list, preprocess: Callable, module: nn.Module) -> torch.Tensor:
    """Apply the CLIP image transform to PIL images and stack them on the device and in the dtype of `module`."""
    device, dtype = parameter_device_and_dtype(module)
    return torch.stack([preprocess(image) for image in images]).to(device=device, dtype=dtype)


class CLIPScore(PromptImageSimilarity):
    """Text-image alignment reward: 100 x cosine(CLIP image embedding, CLIP text embedding of the prompt).

    Unlike the CLIPScore metric (torchmetrics), the cosine is not clipped at 0: a ranking reward should keep the order
    of poor matches too. With trained CLIP models cosines of real image-prompt pairs are positive, where both agree.

    Give an OpenCLIP model name and pretrained tag (downloaded by OpenCLIP), or an already built model (anything with
    `encode_image` and `encode_text`), its image transform and its tokenizer. A `torch.nn.Module`, so the trainer moves
    it with `.to(device)`; inputs follow its parameters. Called like any reward function with `images=` (PIL images)
    and `prompts=` (one per image); other columns are ignored.
    """

    def __init__(
        self,
        model: str | nn.Module = "ViT-H-14",
        pretrained: str | None = "laion2b_s32b_b79k",
        preprocess: Callable | None = None,
        tokenizer: Callable | None = None,
        *,
        batch_size: int = 32,
    ):
        super().__init__()
        if isinstance(model, str):
            name = model
            model, built_preprocess = load_open_clip(name, pretrained)
            preprocess = preprocess or built_preprocess
            tokenizer = tokenizer or open_clip.get_tokenizer(name)
        elif preprocess is None or tokenizer is None:
            raise ValueError(
                "CLIPScore got a built model: also give its image transform (preprocess=) and tokenizer (tokenizer=)."
            )
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.__name__ = "clip_score"

    def scale(self) -> float:
        return 100.0

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised float32 text embeddings, one row per prompt."""
        device, _ = parameter_device_and_dtype(self.model)
        return normalised_rows(
            prompts, lambda batch: self.model.encode_text(self.tokenizer(batch).to(device)), self.batch_size
        )

    def image_embeddings(self, images: list) -> torch.Tensor:
        """L2-normalised float32 image embeddings, one row per image."""
        return normalised_rows(
            images,
            lambda batch: self.model.encode_image(preprocess_batch(batch, self.preprocess, self.model)),
            self.batch_size,
        )
