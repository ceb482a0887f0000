from collections.abc import Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import nn


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


def parameter_device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where inputs of `module` must go: the device and dtype of its parameters (CPU float32 if it has none)."""
    parameter = next(module.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def preprocess_batch(images: list, preprocess: Callable, module: nn.Module) -> torch.Tensor:
    """Apply the CLIP image transform to PIL images and stack them on the device and in the dtype of `module`."""
    device, dtype = parameter_device_and_dtype(module)
    return torch.stack([preprocess(image) for image in images]).to(device=device, dtype=dtype)


class CLIPScore(nn.Module):
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

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised float32 text embeddings, one row per prompt."""
        device, _ = parameter_device_and_dtype(self.model)
        rows = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(prompts[start : start + self.batch_size]).to(device)
            rows.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(rows)

    def image_embeddings(self, images: list) -> torch.Tensor:
        """L2-normalised float32 image embeddings, one row per image."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            pixels = preprocess_batch(images[start : start + self.batch_size], self.preprocess, self.model)
            rows.append(F.normalize(self.model.encode_image(pixels).float(), dim=-1))
        return torch.cat(rows)

    @torch.inference_mode()
    def forward(self, images: list, prompts: list[str] | None = None, **_) -> list[float]:
        if prompts is None or len(images) != len(prompts):
            got = "no prompts" if prompts is None else f"{len(prompts)} prompts"
            raise ValueError(f"CLIPScore needs one prompt per image: got {len(images)} images and {got}.")
        if not images:
            return []
        self.eval()  # a trainer may have switched every module to training mode: no dropout while scoring
        # RAFT samples several images per prompt: encode each distinct prompt once.
        row_of = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
        text = self.text_embeddings(list(row_of))
        rows = torch.tensor([row_of[prompt] for prompt in prompts], device=text.device)
        image = self.image_embeddings(images)
        return (100 * (image * text[rows]).sum(dim=-1)).tolist()
