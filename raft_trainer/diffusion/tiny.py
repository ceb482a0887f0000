"""Tiny Stable Diffusion (1.x, XL, 3), FLUX.1, CLIP, OpenCLIP and image-reward models built from configs, for offline
tests and the examples' `--tiny` runs: nothing is downloaded."""

import json
import os
import tempfile
from collections.abc import Callable

import open_clip
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from .rewards.aesthetic import AestheticHead, AestheticScorer
from .rewards.clip_score import CLIPScore
from .rewards.hps import HPSv2, hps_preprocess
from .rewards.pickscore import PickScore

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
    vae = tiny_vae()
    text_encoder = CLIPTextModel(tiny_clip_text_config())
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


def tiny_vae(**overrides) -> AutoencoderKL:
    """A tiny VAE (4 and 8 channels, 4 latent channels: 32x32 images to 16x16 latents); `overrides` change fields."""
    fields = dict(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )
    return AutoencoderKL(**{**fields, **overrides})


def tiny_clip_text_config(**overrides) -> CLIPTextConfig:
    """The tiny CLIP text encoder's configuration (8-d states, two layers: SDXL reads the penultimate one)."""
    fields = dict(
        hidden_size=8,
        intermediate_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=1000,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=8,
    )
    return CLIPTextConfig(**{**fields, **overrides})


def tiny_t5_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level stand-in for the T5 tokenizer of SD3 and FLUX (right padding, `</s>` appended as T5 does); words
    outside `TINY_CLIP_WORDS` map to `<unk>`."""
    vocab = {token: index for index, token in enumerate(["<pad>", "</s>", "<unk>", *TINY_CLIP_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def tiny_t5_encoder(d_model: int = 16) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(vocab_size=16, d_model=d_model, d_ff=16, d_kv=8, num_layers=1, num_heads=2, dropout_rate=0.0)
    )


def tiny_flow_vae(latent_channels: int = 4) -> AutoencoderKL:
    """A tiny VAE with SD3 / FLUX's latent normalisation (a shift as well as a scale) and no quant convolutions."""
    return tiny_vae(
        latent_channels=latent_channels,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A randomly initialised SDXL pipeline: two CLIP text encoders (the second with a projection, whose pooled output
    and the six size / crop numbers make the UNet's added conditioning); it makes 32x32 images."""
    torch.manual_seed(seed)
    text_config = tiny_clip_text_config()
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + text_config.projection_dim,  # time ids, then pooled text
        cross_attention_dim=2 * text_config.hidden_size,  # both encoders' states, concatenated
        norm_num_groups=2,
    )
    vae = tiny_vae()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        add_watermarker=False,
    )


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """A randomly initialised SD3 pipeline: an MMDiT transformer, two CLIP encoders with projections and a T5 encoder,
    and the flow-matching Euler scheduler; it makes 32x32 images."""
    torch.manual_seed(seed)
    text_config = tiny_clip_text_config()
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=16,  # the T5 states' size; the CLIP states are padded to it
        pooled_projection_dim=2 * text_config.projection_dim,  # both CLIP encoders' pooled outputs
        out_channels=4,
        pos_embed_max_size=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_flow_vae(),
        text_encoder=CLIPTextModelWithProjection(text_config),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=tiny_t5_encoder(16),
        tokenizer_3=tiny_t5_tokenizer(),
        image_encoder=None,
        feature_extractor=None,
    )


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """A randomly initialised FLUX.1 pipeline (with the guidance embedding of FLUX.1-dev unless `guidance_embeds` is
    False, as in schnell): a CLIP and a T5 encoder, latents packed 2x2 into tokens; it makes 32x32 images."""
    torch.manual_seed(seed)
    text_config = tiny_clip_text_config()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels, packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,  # the T5 states' size
        pooled_projection_dim=text_config.hidden_size,  # CLIP's pooled output
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[2, 2, 4],
    )
    pipeline = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_flow_vae(),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_t5_encoder(16),
        tokenizer_2=tiny_t5_tokenizer(),
        image_encoder=None,
        feature_extractor=None,
    )
    # FluxPipeline's default size is a fixed 128 latents (x the VAE factor): make it this tiny model's 32x32 images.
    pipeline.default_sample_size = 16
    return pipeline


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


def tiny_hpsv2(seed: int = 0) -> HPSv2:
    """An `HPSv2` on a tiny random OpenCLIP model (no checkpoint), with HPS's pad-to-square transform."""
    model, _, tokenizer = tiny_open_clip(seed=seed)
    return HPSv2(model=model, preprocess=hps_preprocess(32), tokenizer=tokenizer)


def tiny_clip_model(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A random transformers CLIP for 32x32 images over `CLIP_TEST_VOCAB`, and its processor: PickScore's kind."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text = dict(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer)
    )
    text.update(max_position_embeddings=77, bos_token_id=21, eos_token_id=22, pad_token_id=22)  # the vocab's ids
    vision = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=32)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config={**vision, "patch_size": 8}, projection_dim=8))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model.eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_pickscore(seed: int = 0) -> PickScore:
    """A `PickScore` on a tiny random transformers CLIP (prompts made of `TINY_CLIP_WORDS`)."""
    model, processor = tiny_clip_model(seed)
    return PickScore(model, processor)
