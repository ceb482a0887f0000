"""PickScore (Kirstain et al., 2023, "Pick-a-Pic"): a CLIP ViT-H/14 fine-tuned on the Pick-a-Pic human preferences
between generated images. The score of an image and its prompt is the model's logit, exp(logit_scale) x the cosine of
their projected CLIP embeddings, as the authors' inference example computes it (about 100 x the cosine).

The model is a transformers `CLIPModel` (`yuvalkirstain/PickScore_v1`); its processor is that of the CLIP it was
fine-tuned from (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`): both are ids (or folders) loaded at run time.
"""

import torch
from torch import nn
from transformers import AutoProcessor, CLIPModel

from .similarity import PromptImageSimilarity, normalised_rows, parameter_device_and_dtype

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def projected_features(output) -> torch.Tensor:
    """transformers 5 returns the projected features as an output's `pooler_output`, older versions as a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScore(PromptImageSimilarity):
    """The PickScore reward: exp(logit_scale) x cosine(CLIP image embedding, CLIP text embedding of the prompt).

    `model` is a `CLIPModel` or its id / folder (default `yuvalkirstain/PickScore_v1`); `processor` a CLIP processor
    (tokenizer and image processor) or its id / folder (default `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`). Called
    like any reward function with `images=` (PIL images) and `prompts=` (one per image); other columns are ignored.
    """

    def __init__(
        self,
        model: str | nn.Module = PICKSCORE_MODEL,
        processor=PICKSCORE_PROCESSOR,
        *,
        batch_size: int = 32,
    ):
        super().__init__()
        if isinstance(model, str):
            model = CLIPModel.from_pretrained(model)
        if isinstance(processor, str):
            processor = AutoProcessor.from_pretrained(processor)
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.batch_size = batch_size
        self.__name__ = "pickscore"

    def scale(self) -> float:
        return self.model.logit_scale.exp().item()

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        device, _ = parameter_device_and_dtype(self.model)
        max_length = self.model.config.text_config.max_position_embeddings  # prompts past it are cut, as upstream

        def encode(batch):
            tokens = self.processor(
                text=batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            return projected_features(self.model.get_text_features(**tokens.to(device)))

        return normalised_rows(prompts, encode, self.batch_size)

    def image_embeddings(self, images: list) -> torch.Tensor:
        device, dtype = parameter_device_and_dtype(self.model)

        def encode(batch):
            pixels = self.processor(images=[image.convert("RGB") for image in batch], return_tensors="pt")[
                "pixel_values"
            ]
            return projected_features(self.model.get_image_features(pixel_values=pixels.to(device, dtype)))

        return normalised_rows(images, encode, self.batch_size)
