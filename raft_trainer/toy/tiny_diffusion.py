"""Tiny Stable Diffusion, OpenCLIP and image-reward models built from configs, for offline tests and the examples'
`--tiny` runs: nothing is downloaded."""

import json
import os
import tempfile
from collections.abc import Callable

import open_clip
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..rewards.aesthetic import AestheticHead, AestheticScorer
from ..rewards.clip_score import CLIPScore

# The 23-token CLIP BPE vocabulary of the transformers tests: enough for prompts made of its words.
CLIP_TEST_VOCAB = (
    "l o w e r s t i d n lo l</w> w</w> r</w> t</w> low</w> er</w> lowest</w> newer</w> wider <unk> "
    "<|startoftext|> <|endoftext|>"
).split()
CLIP_TEST_MERGES = ["#version: 0.2", "l o", "lo w</w>", "e r</w>"]
TINY_CLIP_WORDS = ["low", "lower", "lowest", "newer", "wider"]


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over `CLIP_TEST_VOCAB`, padded to 77 tokens as Stable Diffusion expects."""
    with tempfile.TemporaryDirectory() as directory:
        vocab_file, merges_file = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        with open(vocab_file, "w") as file:
            json.dump({token: index for index, token in enumerate(CLIP_TEST_VOCAB)}, file)
        with open(merges_file, "w") as file:
            file.write("\n".join(CLIP_TEST_MERGES) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=77)


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised Stable Diffusion pipeline with a few thousand parameters; it makes 32x32 images."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=1000,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def tiny_open_clip(embed_dim: int = 32, seed: int = 0) -> tuple[torch.nn.Module, Callable, Callable]:
    """A random OpenCLIP model for 32x32 images that runs in milliseconds: (model, image transform, tokenizer)."""
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-B-32",
        pretrained=None,
        embed_dim=embed_dim,
        vision_cfg=dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    )
    return model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32")


def tiny_aesthetic_scorer(head: AestheticHead | None = None, seed: int = 0) -> AestheticScorer:
    """An `AestheticScorer` on a tiny OpenCLIP model whose 32-d features a random projection maps to the head's 768
    inputs; the head is random unless given (tests give it the real LAION weights)."""
    model, preprocess, _ = tiny_open_clip(seed=seed)
    torch.manual_seed(seed)
    return AestheticScorer(head or AestheticHead(), model, preprocess, projection=torch.nn.Linear(32, 768))


def tiny_clip_score(seed: int = 0) -> CLIPScore:
    """A `CLIPScore` on a tiny random OpenCLIP model."""
    model, preprocess, tokenizer = tiny_open_clip(seed=seed)
    return CLIPScore(model, preprocess=preprocess, tokenizer=tokenizer)
