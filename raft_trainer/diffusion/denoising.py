"""The fine-tuning side of diffusion RAFT for noise-prediction pipelines (SD 1.x / 2.x, SDXL): the denoising loss with
Min-SNR weighting, the batches it takes, and where the UNet LoRA goes and is saved."""

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name `load_lora_weights` looks for


def collate_latent_examples(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([example[name] for example in examples]) for name in examples[0]}


def min_snr_weighted_loss(
    prediction: torch.Tensor, target: torch.Tensor, snr: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma weighting (Hang et al., 2023): each sample's MSE weighted by min(SNR, gamma) / SNR for epsilon
    targets, min(SNR, gamma) / (SNR + 1) for velocity targets, so that easy low-noise timesteps do not dominate."""
    weights = torch.clamp(snr, max=gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses on: the noise (epsilon prediction) or the velocity (v-prediction)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"the scheduler's prediction_type {prediction_type!r} is not epsilon or v_prediction.")


def denoising_loss(
    prediction: torch.Tensor, target: torch.Tensor, scheduler, timesteps: torch.Tensor, snr_gamma: float | None
) -> torch.Tensor:
    """The MSE of the UNet's prediction, Min-SNR weighted when `snr_gamma` is set."""
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    return min_snr_weighted_loss(
        prediction, target, compute_snr(scheduler, timesteps), snr_gamma, scheduler.config.prediction_type
    )
