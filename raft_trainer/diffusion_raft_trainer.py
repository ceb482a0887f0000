"""DiffusionRAFTTrainer: the RAFT stage cycle (stage_trainer.py) for a Stable Diffusion UNet LoRA.

What is specific to diffusion: candidates are images sampled with the pipeline; the kept images are encoded once
per stage (VAE latent distribution, text-encoder states), and the UNet LoRA is fine-tuned on them with the
standard denoising loss (epsilon or v-prediction, optional Min-SNR weighting) for `iterations_per_stage` steps.
Only the LoRA is trained and saved, in the diffusers format `load_lora_weights` reads.
"""

import os
import shutil
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import cast_training_params, compute_snr
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from .diffusion_raft_config import DiffusionRAFTConfig
from .files import atomic_path
from .images import save_image_grid
from .rewards import as_reward_functions
from .stage_config import with_torch_dtypes
from .stage_trainer import Candidates, StageTrainer, each_prompt_repeated, validate_prompt_dataset

LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name `load_lora_weights` looks for


class DiffusionRAFTTrainer(StageTrainer):
    """RAFT (Reward rAnked FineTuning) for Stable Diffusion: fine-tunes a UNet LoRA on the best images of each stage.

    Args:
        pipeline (`StableDiffusionPipeline` or `str`): the pipeline, or the id / path to load it from. Its UNet gets
            a LoRA adapter (the only trained weights); VAE and text encoder stay frozen.
        reward_fn: a reward function called with `images=` (PIL images), `prompts=` and the other dataset columns,
            returning one float per image (`raft_trainer.rewards.AestheticScorer`, `CLIPScore`, or your own), or a
            list of these weighted by `args.reward_weights`.
        args (`DiffusionRAFTConfig`): the configuration.
        train_dataset (`datasets.Dataset`): text prompts in a `prompt` column; the other columns go to the rewards.
        callbacks, optimizers: as in `transformers.Trainer`.
    """

    sample_image_column = "image"
    card_training = "a UNet LoRA on them with the denoising loss"
    card_library = "diffusers"

    def __init__(
        self,
        pipeline: StableDiffusionPipeline | str,
        reward_fn,
        args: DiffusionRAFTConfig | None = None,
        train_dataset: Dataset | None = None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is None:
            name = pipeline if isinstance(pipeline, str) else pipeline.name_or_path or "sd"
            args = DiffusionRAFTConfig(output_dir=f"{name.rstrip('/').split('/')[-1]}-RAFT")
        validate_prompt_dataset(train_dataset)
        if not isinstance(train_dataset[0]["prompt"], str):
            raise ValueError("DiffusionRAFTTrainer needs text prompts; train_dataset['prompt'] holds chat messages.")
        if isinstance(pipeline, str):
            pipeline = StableDiffusionPipeline.from_pretrained(
                pipeline, **with_torch_dtypes(args.pipeline_init_kwargs or {})
            )
        self.pipeline = pipeline
        pipeline.vae.requires_grad_(False)
        pipeline.text_encoder.requires_grad_(False)
        unet = pipeline.unet.requires_grad_(False)
        unet.add_adapter(
            LoraConfig(
                r=args.lora_rank,
                lora_alpha=args.lora_alpha or args.lora_rank,
                init_lora_weights="gaussian",
                target_modules=LORA_TARGET_MODULES,
            )
        )
        cast_training_params(unet, dtype=torch.float32)  # LoRA weights train in float32 even in a half pipeline
        # Training draws timesteps from the full noise schedule of the pipeline's scheduler.
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        super().__init__(
            unet,
            as_reward_functions(reward_fn),
            args,
            train_dataset,
            data_collator=collate_latent_examples,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        pipeline.to(self.accelerator.device)
        pipeline.set_progress_bar_config(disable=True)

    # ----------------------------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------------------------

    def generate(self, prompt_indices: list[int], prompts: list) -> Candidates:
        args = self.args
        per_prompt = args.generations_per_prompt
        all_prompts = [prompt for prompt in prompts for _ in range(per_prompt)]
        # A generator seeded by (seed, stage, process): the stage's images do not depend on what ran before,
        # so a resumed run draws the same ones.
        stage_seed = np.random.SeedSequence([args.seed, self.current_stage(), args.process_index]).generate_state(1)
        generator = torch.Generator().manual_seed(int(stage_seed[0]))
        images = []
        unet = self.pipeline.unet
        was_training = unet.training
        unet.eval()
        batch_starts = range(0, len(all_prompts), args.generation_batch_size)
        for start in tqdm(batch_starts, desc="generating", disable=self._quiet()):
            batch = all_prompts[start : start + args.generation_batch_size]
            with self.accelerator.autocast():  # generation in the run's mixed precision, like training
                images += self.pipeline(
                    prompt=batch,
                    negative_prompt=[args.negative_prompt] * len(batch) if args.negative_prompt else None,
                    height=args.height,
                    width=args.width,
                    num_inference_steps=args.num_inference_steps,
                    guidance_scale=args.guidance_scale,
                    generator=generator,
                    output_type="pil",
                ).images
        unet.train(was_training)
        return {"image": images, "group": each_prompt_repeated(len(prompts), per_prompt)}

    def reward_inputs(self, candidates: Candidates) -> dict:
        return {"images": candidates["image"]}

    # ----------------------------------------------------------------------------------------------------------------
    # Stage files
    # ----------------------------------------------------------------------------------------------------------------

    def stage_file_columns(self, candidates: Candidates) -> dict[str, list]:
        return {name: candidates[name] for name in ("prompt_index", "prompt")}

    def stage_rows(self, stage, candidates, rewards, rewards_per_func, kept_by_filter, kept) -> dict[str, list]:
        """The stage file's rows, with `image`: the PNG of each saved candidate, relative to the `stages` folder
        (kept candidates always, the others with `save_candidate_images`; `None` when not saved). Also writes the
        stage's grid of kept images with their rewards."""
        rows = super().stage_rows(stage, candidates, rewards, rewards_per_func, kept_by_filter, kept)
        stages_dir = os.path.join(self.args.output_dir, "stages")
        paths = []
        for index, (image, is_kept) in enumerate(zip(candidates["image"], rows["selected"])):
            path = None
            if is_kept or self.args.save_candidate_images:
                path = f"stage_{stage:03d}/{index:05d}.png"
                with atomic_path(os.path.join(stages_dir, path)) as partial:
                    image.save(partial, format="PNG")
            paths.append(path)
        rows = {**rows, "image": paths}
        kept_indices = [index for index, is_kept in enumerate(rows["selected"]) if is_kept]
        save_image_grid(
            [candidates["image"][index] for index in kept_indices],
            [f"{rows['reward'][index]:.3f}" for index in kept_indices],
            os.path.join(stages_dir, f"stage_{stage:03d}_grid.png"),
        )
        return rows

    # ----------------------------------------------------------------------------------------------------------------
    # Fine-tuning
    # ----------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def training_examples(self, candidates: Candidates, kept_indices: list[int]) -> list[dict]:
        """The kept images as what the denoising loss needs, computed once a stage with the frozen encoders: the
        VAE's latent distribution (sampled afresh at every step, as when training on the images) and the prompt's
        text-encoder states."""
        pipeline, device = self.pipeline, self.accelerator.device
        examples = []
        for start in range(0, len(kept_indices), self.args.generation_batch_size):
            batch = kept_indices[start : start + self.args.generation_batch_size]
            pixels = pipeline.image_processor.preprocess([candidates["image"][i] for i in batch])
            moments = pipeline.vae.encode(pixels.to(device, pipeline.vae.dtype)).latent_dist.parameters
            prompt_embeds, _ = pipeline.encode_prompt(
                [candidates["prompt"][i] for i in batch], device, 1, do_classifier_free_guidance=False
            )
            for row in range(len(batch)):
                examples.append({"latent_moments": moments[row].cpu(), "prompt_embeds": prompt_embeds[row].cpu()})
        return examples

    def batches_per_stage(self) -> int:
        return self.args.iterations_per_stage * self.args.gradient_accumulation_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The denoising loss on a batch of kept images: noise them at random timesteps and regress the UNet's
        prediction on the scheduler's target (the noise, or the velocity for v-prediction)."""
        vae_config = self.pipeline.vae.config
        latents = DiagonalGaussianDistribution(inputs["latent_moments"]).sample() * vae_config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        )
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"the scheduler's prediction_type {prediction_type!r} is not epsilon or v_prediction.")
        prediction = model(noisy_latents, timesteps, inputs["prompt_embeds"], return_dict=False)[0]
        if self.args.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float())
        return min_snr_weighted_loss(
            prediction, target, compute_snr(self.noise_scheduler, timesteps), self.args.snr_gamma, prediction_type
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Saving and loading the LoRA
    # ----------------------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the UNet LoRA in the diffusers format (`pipeline.load_lora_weights(output_dir)` loads it) and,
        outside checkpoints, the RAFT model card."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        unet = self.accelerator.unwrap_model(self.model)
        os.makedirs(output_dir, exist_ok=True)
        staging = tempfile.mkdtemp(dir=output_dir)  # written whole, then moved: never a half-written file
        try:
            StableDiffusionPipeline.save_lora_weights(
                staging,
                unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                weight_name=LORA_WEIGHT_NAME,
                safe_serialization=True,
            )
            os.replace(os.path.join(staging, LORA_WEIGHT_NAME), os.path.join(output_dir, LORA_WEIGHT_NAME))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not _internal_call:
            self.create_model_card(tags=["diffusers", "lora", "stable-diffusion"], output_dir=output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # The Trainer only knows transformers / peft checkpoints; ours hold the LoRA in the diffusers format.
        state_dict, _ = StableDiffusionPipeline.lora_state_dict(resume_from_checkpoint, weight_name=LORA_WEIGHT_NAME)
        unet_state = {key.removeprefix("unet."): value for key, value in state_dict.items()}
        unet = self.accelerator.unwrap_model(model or self.model)
        result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")
        if result.unexpected_keys:
            raise ValueError(f"{resume_from_checkpoint} holds LoRA weights this UNet does not have.")

    def base_model_name(self) -> str | None:
        return self.pipeline.name_or_path or None

    def card_usage(self, base_model: str | None) -> list[str]:
        return [
            "```python",
            "from diffusers import StableDiffusionPipeline",
            "",
            f'pipeline = StableDiffusionPipeline.from_pretrained("{base_model or "<base model>"}")',
            'pipeline.load_lora_weights("<this repository or folder>")',
            "```",
            "",
        ]


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
