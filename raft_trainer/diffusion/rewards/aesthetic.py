import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...models import load_tensors, weights_file
from .clip_score import load_open_clip, preprocess_batch
from .similarity import parameter_device_and_dtype

# The LAION "improved aesthetic predictor" weights (sac+logos+ava1-l14-linearMSE.pth, Apache-2.0, from
# christophschuhmann/improved-aesthetic-predictor), renamed, in the Hub repo TRL's DDPO example loaded them from.
AESTHETIC_HEAD_REPO = "trl-lib/ddpo-aesthetic-predictor"
AESTHETIC_HEAD_FILENAME = "aesthetic-model.pth"


class AestheticHead(nn.Module):
    """The LAION improved aesthetic predictor: an MLP from a CLIP ViT-L/14 image embedding to a score (about 1-10).

    Built exactly as upstream (linear layers and dropout, no activations) so its state dict has the upstream keys
    (`layers.{0,2,4,6,7}.{weight,bias}`) and the published file loads strictly. It was trained on L2-normalised
    embeddings of OpenAI's CLIP ViT-L/14: the caller normalises ([N, 768] in, [N] out); `AestheticScorer` does.
    """

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(768, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)

    @classmethod
    def from_pretrained(
        cls, weights: str | os.PathLike = AESTHETIC_HEAD_REPO, filename: str = AESTHETIC_HEAD_FILENAME
    ) -> "AestheticHead":
        """Load the head from a local file, a local folder holding `filename`, or a Hub repo's `filename`.

        The upstream file is a pickled state dict saved on CUDA: it is read with `weights_only=True` (tensors only,
        no code) onto the CPU.
        """
        head = cls()
        head.load_state_dict(load_tensors(weights_file(weights, filename)))
        return head


class AestheticScorer(nn.Module):
    """Aesthetic reward: the LAION aesthetic predictor on CLIP ViT-L/14 image embeddings, one float per image.

    By default the image encoder is OpenCLIP's ViT-L-14 with OpenAI's weights (and QuickGELU, as OpenAI trained it),
    whose features are the ones the head was trained on, and the head comes from `AESTHETIC_HEAD_REPO`. `head` may
    instead be a local file or folder, another Hub repo (file `head_filename`) or a built `AestheticHead`;
    `clip_model` may be a built model (anything with `encode_image`) given with its image transform `preprocess`.
    An optional `projection` maps the encoder's features to the head's 768 inputs before normalisation (tests use it
    to put a tiny CLIP in front of the real head).

    A `torch.nn.Module`, so the trainer moves it with `.to(device)`; inputs follow its parameters. Called like any
    reward function with `images=` (PIL images); prompts and other columns are ignored.
    """

    def __init__(
        self,
        head: AestheticHead | str | os.PathLike = AESTHETIC_HEAD_REPO,
        clip_model: str | nn.Module = "ViT-L-14",
        preprocess: Callable | None = None,
        projection: nn.Module | None = None,
        *,
        pretrained: str | None = "openai",
        head_filename: str = AESTHETIC_HEAD_FILENAME,
        batch_size: int = 32,
    ):
        super().__init__()
        if isinstance(clip_model, str):
            clip_model, built_preprocess = load_open_clip(clip_model, pretrained)
            preprocess = preprocess or built_preprocess
        elif preprocess is None:
            raise ValueError("AestheticScorer got a built clip_model: also give its image transform (preprocess=).")
        if not isinstance(head, nn.Module):
            head = AestheticHead.from_pretrained(head, head_filename)
        self.clip_model = clip_model
        self.projection = projection
        self.head = head
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.eval().requires_grad_(False)
        self.__name__ = "aesthetic"

    def image_embeddings(self, images: list) -> torch.Tensor:
        """The head's inputs: image features (projected if a projection is set), L2-normalised, float32."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            features = self.clip_model.encode_image(
                preprocess_batch(images[start : start + self.batch_size], self.preprocess, self.clip_model)
            )
            if self.projection is not None:
                device, dtype = parameter_device_and_dtype(self.projection)
                features = self.projection(features.to(device=device, dtype=dtype))
            rows.append(F.normalize(features.float(), dim=-1))
        return torch.cat(rows)

    @torch.inference_mode()
    def forward(self, images: list, **_) -> list[float]:
        if not images:
            return []
        self.eval()  # a trainer may have switched every module to training mode: the head's dropout stays off
        device, dtype = parameter_device_and_dtype(self.head)
        return self.head(self.image_embeddings(images).to(device=device, dtype=dtype)).float().tolist()
