"""The fine-tuning side of flow-matching pipelines (SD3 / SD3.5, FLUX.1): the rectified-flow loss with the timestep
sampling and weighting schemes of diffusers' SD3 training script.

On the straight path between a clean latent x0 and noise e, the point at noise level sigma is
x_sigma = (1 - sigma) x0 + sigma e and its velocity is v = e - x0: the transformer is trained to predict v.
"""

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

# How training draws sigma (the first three) or weighs the loss after a uniform draw (the last two), as in diffusers'
# SD3 script ("uniform" is its "none").
WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")


def sample_flow_timesteps(
    scheduler, batch_size: int, weighting_scheme: str, logit_mean: float, logit_std: float, mode_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (timesteps, sigmas) for a batch from the training schedule of a `FlowMatchEulerDiscreteScheduler` that
    has not been set for inference (its `timesteps` and `sigmas` are the full 1000-step, shifted schedule).

    u in [0, 1] comes from the scheme's density (logit-normal: sigmoid of N(logit_mean, logit_std); mode: SD3's
    mode-seeking density with `mode_scale`; otherwise uniform) and picks the schedule entry at u * 1000, as the SD3
    script does, so the scheduler's shift is applied."""
    u = compute_density_for_timestep_sampling(
        weighting_scheme=weighting_scheme,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
    )
    num_train_timesteps = scheduler.config.num_train_timesteps
    # sigmoid can round to exactly 1.0 in float32: clamp, or the index would run one past the schedule.
    indices = (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)
    return scheduler.timesteps[indices], scheduler.sigmas[indices]


def flow_noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The point at noise level sigma on the straight path: (1 - sigma) x0 + sigma e."""
    sigmas = sigmas.view(-1, *[1] * (latents.ndim - 1)).to(latents)
    return (1.0 - sigmas) * latents + sigmas * noise


def flow_matching_loss(
    prediction: torch.Tensor,
    noisy_latents: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    weighting_scheme: str,
    precondition_outputs: bool = False,
) -> torch.Tensor:
    """The weighted flow-matching MSE: mean over samples of w(sigma) * mean((prediction - (noise - latents))^2).

    With `precondition_outputs` (the SD3 script's EDM-style option) the prediction is first turned into a clean-latent
    estimate, x_sigma - sigma * prediction, and compared with `latents`: the same loss times sigma^2. The weight w is
    sigma^-2 for "sigma_sqrt", 2 / (pi (1 - 2 sigma + 2 sigma^2)) for "cosmap", and 1 otherwise."""
    sigmas = sigmas.view(-1, *[1] * (latents.ndim - 1)).to(latents)
    prediction, latents = prediction.float(), latents.float()
    if precondition_outputs:
        prediction = prediction * (-sigmas) + noisy_latents.float()
        target = latents
    else:
        target = noise.float() - latents
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=weighting_scheme, sigmas=sigmas.float())
    per_sample = (weighting * (prediction - target) ** 2).reshape(target.shape[0], -1).mean(dim=1)
    return per_sample.mean()
