"""DiffusionRAFTTrainer on tiny SDXL, SD3 and FLUX.1 pipelines built from configs (16x16 images, milliseconds a step);
SD 1.x is tests/test_diffusion.py."""

import math
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from safetensors.torch import load_file

from raft_trainer import DiffusionRAFTConfig, DiffusionRAFTTrainer
from raft_trainer.diffusion.denoising import LORA_WEIGHT_NAME
from raft_trainer.diffusion.rewards import JPEGCompressibility
from raft_trainer.diffusion.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

from .helpers import check_two_stage_resume, config_maker, stage_rows

PROMPTS = ["lower newer", "wider", "lowest"]
SEQUENCE = 8  # T5 tokens of the SD3 / FLUX prompts: short, for speed
# family: (tiny pipeline, the trainer's settings for it, the keywords its pipeline call needs, LoRA key prefix)
FAMILIES = {
    "sdxl": (tiny_sdxl_pipeline, {}, {}, "unet."),
    "sd3": (tiny_sd3_pipeline, {"max_sequence_length": SEQUENCE}, {"max_sequence_length": SEQUENCE}, "transformer."),
    "flux": (
        tiny_flux_pipeline,
        {"max_sequence_length": SEQUENCE, "guidance_scale": 3.5},
        {"max_sequence_length": SEQUENCE, "guidance_scale": 3.5},
        "transformer.",
    ),
}


def brightness(images, **kwargs):
    return [float(np.asarray(image, dtype=np.float64).mean() / 255) for image in images]


@pytest.fixture
def prompts():
    return Dataset.from_dict({"prompt": PROMPTS})


@pytest.fixture
def make_args(tmp_path):
    return config_maker(
        tmp_path,
        DiffusionRAFTConfig,
        prompts_per_stage=3,
        num_generations=2,
        height=16,
        width=16,
        num_inference_steps=2,
        iterations_per_stage=3,
        per_device_train_batch_size=2,
        learning_rate=1e-1,
    )


def images_of(pipeline, call_kwargs: dict) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    output = pipeline(
        PROMPTS[:2],
        height=16,
        width=16,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        **call_kwargs,
    )
    return np.stack([np.asarray(image, dtype=np.float64) for image in output.images])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_raft_keeps_the_best_image_and_saves_a_lora_the_family_pipeline_loads(family, prompts, make_args, tmp_path):
    build, settings, call_kwargs, prefix = FAMILIES[family]
    base_images = images_of(build(), call_kwargs)
    reward = JPEGCompressibility()
    args = make_args(**settings)
    trainer = DiffusionRAFTTrainer(build(), reward, args=args, train_dataset=prompts)
    trainer.train()

    rows = stage_rows(args.output_dir)
    assert len(rows) == len(PROMPTS) * 2
    for start in range(0, len(rows), 2):
        candidates = rows[start : start + 2]
        best = max(range(2), key=lambda i: candidates[i]["reward"])
        assert [row["selected"] for row in candidates] == [i == best for i in range(2)]
        saved = Image.open(os.path.join(args.output_dir, "stages", candidates[best]["image"]))
        assert reward(images=[saved]) == [candidates[best]["reward"]]  # the PNG holds the pixels that were scored

    trainer.save_model(str(tmp_path / "lora"))
    keys = load_file(tmp_path / "lora" / LORA_WEIGHT_NAME).keys()
    assert keys and all(key.startswith(prefix) and "lora" in key for key in keys)
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "RAFT" in card and type(trainer.pipeline).__name__ in card
    loaded = build()
    loaded.load_lora_weights(tmp_path / "lora")
    trained_images = images_of(trainer.pipeline, call_kwargs)
    assert np.abs(trained_images - base_images).max() > 1  # the LoRA changed the pipeline
    np.testing.assert_allclose(images_of(loaded, call_kwargs), trained_images, atol=1)  # 8-bit: a level apart at most


def test_sdxl_conditions_each_kept_image_on_pooled_text_and_its_size_and_crop(prompts, make_args):
    trainer = DiffusionRAFTTrainer(tiny_sdxl_pipeline(), brightness, args=make_args(), train_dataset=prompts)
    candidates = trainer.generate([0, 1], PROMPTS[:2])
    candidates["prompt"] = [PROMPTS[i] for i in candidates["prompt_position"]]
    examples = trainer.training_examples(candidates, [0, 3])
    assert set(examples[0]) == {"latent_moments", "prompt_embeds", "pooled_prompt_embeds", "time_ids"}
    assert examples[0]["time_ids"].tolist() == [16, 16, 0, 0, 16, 16]  # original size, crop top-left, target size
    assert examples[0]["pooled_prompt_embeds"].shape == (8,)  # the second encoder's projection
    assert examples[0]["prompt_embeds"].shape == (77, 16)  # both encoders' states, side by side
    assert examples[0]["latent_moments"].shape == (8, 8, 8)


def flow_sigmas(u: torch.Tensor, shift: float = 3.0) -> torch.Tensor:
    """SD3's training schedule by hand: entry floor(1000 u) of t = 1000, 999, ..., 1 (as t / 1000), shifted."""
    plain = (1000 - (u * 1000).long()) / 1000
    return shift * plain / (1 + (shift - 1) * plain)


def flux_pack(latents: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def flux_unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    batch, _, packed_channels = tokens.shape
    patches = tokens.view(batch, height // 2, width // 2, packed_channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, packed_channels // 4, height, width)


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("sdxl", {}),
        ("sd3", {"weighting_scheme": "logit_normal", "logit_mean": 0.3, "logit_std": 0.8}),
        ("sd3", {"weighting_scheme": "mode", "mode_scale": 1.29}),
        ("sd3", {"weighting_scheme": "uniform"}),
        ("sd3", {"weighting_scheme": "cosmap"}),
        ("sd3", {"weighting_scheme": "sigma_sqrt", "precondition_outputs": True}),
        ("flux", {"weighting_scheme": "logit_normal"}),
    ],
)
def test_loss_follows_its_definition_on_a_hand_built_batch(prompts, make_args, family, overrides):
    build, settings, _, _ = FAMILIES[family]
    args = make_args(**settings, **overrides)
    trainer = DiffusionRAFTTrainer(build(), brightness, args=args, train_dataset=prompts)
    generator = torch.Generator().manual_seed(1)
    pooled_size = {"sdxl": 8, "sd3": 16, "flux": 8}[family]
    batch = {
        "latent_moments": torch.randn(2, 8, 8, 8, generator=generator),
        "prompt_embeds": torch.randn(2, 11, 16, generator=generator),
        "pooled_prompt_embeds": torch.randn(2, pooled_size, generator=generator),
    }
    if family == "sdxl":
        batch["time_ids"] = torch.tensor([[16.0, 16, 0, 0, 16, 16], [32, 24, 4, 0, 16, 16]])
    torch.manual_seed(0)
    loss = trainer.compute_loss(trainer.model, batch)

    # The same draws in the same order: the latent sample, the noise, the timesteps.
    torch.manual_seed(0)
    mean, log_var = batch["latent_moments"].chunk(2, dim=1)
    sample = mean + torch.exp(0.5 * log_var.clamp(-30, 20)) * torch.randn_like(mean)
    model = trainer.model
    with torch.no_grad():
        if family == "sdxl":
            latents = sample * 0.18215
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, 1000, (2,))
            alpha_bar = trainer.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
            noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
            added = {"text_embeds": batch["pooled_prompt_embeds"], "time_ids": batch["time_ids"]}
            prediction = model(noisy, timesteps, batch["prompt_embeds"], added_cond_kwargs=added).sample
            expected = ((prediction - noise) ** 2).mean()
            torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
            return
        latents = (sample - 0.0609) * 1.5035  # the VAE's shift, then its scale
        noise = torch.randn_like(latents)
        scheme = args.weighting_scheme
        if scheme == "logit_normal":
            u = torch.sigmoid(torch.randn(2) * args.logit_std + args.logit_mean)
        else:
            u = torch.rand(2)
            if scheme == "mode":
                u = 1 - u - args.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        sigma = flow_sigmas(u)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        if family == "sd3":
            velocity = model(
                hidden_states=noisy,
                timestep=sigma * 1000,
                encoder_hidden_states=batch["prompt_embeds"],
                pooled_projections=batch["pooled_prompt_embeds"],
            ).sample
        else:
            rows, columns = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
            image_ids = torch.stack([torch.zeros(16), rows.flatten(), columns.flatten()], dim=1)
            tokens = model(
                hidden_states=flux_pack(noisy),
                timestep=sigma,
                guidance=torch.full((2,), 3.5),
                pooled_projections=batch["pooled_prompt_embeds"],
                encoder_hidden_states=batch["prompt_embeds"],
                txt_ids=torch.zeros(11, 3),
                img_ids=image_ids,
            ).sample
            velocity = flux_unpack(tokens, 8, 8)
    if args.precondition_outputs:
        squared_error = ((noisy - s * velocity) - latents) ** 2
    else:
        squared_error = (velocity - (noise - latents)) ** 2
    weight = {
        "sigma_sqrt": sigma**-2,
        "cosmap": 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2)),
    }.get(scheme, torch.ones(2))
    expected = (weight * squared_error.mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_resumed_run_ends_with_the_same_lora(family, prompts, make_args, tmp_path):
    tiny_pipeline, settings, _, _ = FAMILIES[family]

    def make_trainer(reward, output_dir):
        args = make_args(output_dir=output_dir, num_stages=2, save_strategy="epoch", prompts_per_stage=2, **settings)
        return DiffusionRAFTTrainer(tiny_pipeline(), reward, args=args, train_dataset=prompts)

    check_two_stage_resume(make_trainer, brightness, tmp_path)


# What each family samples with by default on its real models: the defaults of diffusers' pipeline `__call__` and
# the real denoiser's sample size in latents (64 for SD 1.5, 128 for SDXL, SD3 and FLUX.1) times the VAE factor 8.
REAL_SAMPLING_DEFAULTS = {
    "sd": (tiny_sd_pipeline, 64, dict(height=512, width=512, num_inference_steps=50, guidance_scale=7.5)),
    "sdxl": (tiny_sdxl_pipeline, 128, dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=5.0)),
    "sd3": (tiny_sd3_pipeline, 128, dict(height=1024, width=1024, num_inference_steps=28, guidance_scale=7.0)),
    "flux": (tiny_flux_pipeline, 128, dict(height=1024, width=1024, num_inference_steps=28, guidance_scale=3.5)),
}
UNSET_SAMPLING = dict(height=None, width=None, num_inference_steps=None, guidance_scale=None)


@pytest.mark.parametrize("family", list(REAL_SAMPLING_DEFAULTS))
def test_unset_sampling_fields_take_the_family_defaults_and_set_ones_win(family, prompts, make_args):
    tiny_pipeline, sample_size, expected = REAL_SAMPLING_DEFAULTS[family]
    pipeline = tiny_pipeline()
    pipeline.vae_scale_factor = 8  # sized as the real models (nothing is generated here)
    if family == "sd":
        pipeline.unet.register_to_config(sample_size=sample_size)  # SD's pipeline reads the UNet config
    else:
        pipeline.default_sample_size = sample_size
    args = make_args(**UNSET_SAMPLING)
    trainer = DiffusionRAFTTrainer(pipeline, brightness, args=args, train_dataset=prompts)
    assert {name: getattr(trainer.args, name) for name in expected} == expected
    assert {name: trainer.family.generation_kwargs(1)[name] for name in expected} == expected
    assert all(getattr(args, name) is None for name in UNSET_SAMPLING)  # the caller's config stays as given

    chosen = dict(height=None, width=48, num_inference_steps=3, guidance_scale=None)
    trainer = DiffusionRAFTTrainer(tiny_pipeline(), brightness, args=make_args(**chosen), train_dataset=prompts)
    sampled = {name: getattr(trainer.args, name) for name in expected}
    assert sampled == {**expected, "height": 32, "width": 48, "num_inference_steps": 3}  # 32: the tiny model's


@pytest.mark.parametrize("family", list(REAL_SAMPLING_DEFAULTS))
def test_a_run_samples_at_the_pipelines_own_size_and_guidance_where_unset(family, prompts, make_args):
    tiny_pipeline, _, expected = REAL_SAMPLING_DEFAULTS[family]
    settings = FAMILIES[family][1] if family in FAMILIES else {}
    args = make_args(**{**settings, **UNSET_SAMPLING, "num_inference_steps": 2})
    trainer = DiffusionRAFTTrainer(tiny_pipeline(), brightness, args=args, train_dataset=prompts)
    trainer.train()

    # The pipeline records what it was last called with: the family's guidance and the steps given.
    assert (trainer.pipeline.guidance_scale, trainer.pipeline.num_timesteps) == (expected["guidance_scale"], 2)
    kept = [row["image"] for row in stage_rows(args.output_dir) if row["selected"]]
    stages = os.path.join(args.output_dir, "stages")
    assert kept and {Image.open(os.path.join(stages, path)).size for path in kept} == {(32, 32)}  # the tiny models'


def test_settings_a_family_cannot_use_are_rejected(prompts, make_args):
    with pytest.raises(ValueError, match="snr_gamma=5.0 weights the denoising loss.*choose weighting_scheme"):
        DiffusionRAFTTrainer(tiny_sd3_pipeline(), brightness, args=make_args(snr_gamma=5.0), train_dataset=prompts)
    with pytest.raises(ValueError, match="negative_prompt='wider': FLUX.1 is guidance-distilled"):
        args = make_args(negative_prompt="wider")
        DiffusionRAFTTrainer(tiny_flux_pipeline(), brightness, args=args, train_dataset=prompts)
    pipeline = tiny_flux_pipeline()
    pipeline.vae_scale_factor = 8  # as in the real FLUX.1 VAE: sides must be multiples of 16
    with pytest.raises(ValueError, match="height=24: FLUX.1 .* multiples of 16; set height to one"):
        DiffusionRAFTTrainer(pipeline, brightness, args=make_args(height=24, width=32), train_dataset=prompts)
    with pytest.raises(ValueError, match="pipeline is a dict; DiffusionRAFTTrainer fine-tunes StableDiffusionPip"):
        DiffusionRAFTTrainer({}, brightness, args=make_args(), train_dataset=prompts)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"weighting_scheme": "lognormal"}, "weighting_scheme must be one of logit_normal, mode, uniform"),
        ({"logit_std": 0.0}, "logit_std must be > 0"),
        ({"max_sequence_length": 0}, "max_sequence_length must be >= 1"),
        ({"lora_target_modules": []}, "lora_target_modules is empty"),
    ],
)
def test_bad_flow_matching_configuration_is_rejected(make_args, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(**overrides)
