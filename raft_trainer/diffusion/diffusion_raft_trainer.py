"""DiffusionRAFTTrainer: the RAFT stage cycle (stage_trainer.py) for a LoRA on a diffusers pipeline's denoiser.

What is specific to diffusion: candidates are images sampled with the pipeline; the kept images are encoded once
per stage (VAE latent distribution, text-encoder states), and the LoRA is fine-tuned on them for
`iterations_per_stage` steps: on the UNet with the denoising loss (epsilon or v-prediction, optional Min-SNR
weighting) for SD 1.x / 2.x and SDXL, on the transformer with the flow-matching loss for SD3 and FLUX.1. What differs
between these families is in `families.py`. Only the LoRA is trained and saved, in the format the family's
`load_lora_weights` reads.
"""

import os
import shutil
import tempfile

import numpy as np
import torch
from datasets import Dataset
from diffusers import DiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, set_peft_model_state_dict
from tqdm.auto import tqdm

from ..files import atomic_path
from ..memory import eval_mode
from ..rewards import as_reward_functions, one_reward_argument
from ..stage_config import with_torch_dtypes
from ..stage_trainer import StageTrainer
from ..stages.prompts import each_prompt_repeated, validate_prompt_dataset
from .denoising import LORA_WEIGHT_NAME, collate_latent_examples, denoising_loss, denoising_target
from .diffusion_raft_config import DiffusionRAFTConfig
from .families import pipeline_family
from .flow_matching import flow_matching_loss, flow_noisy_latents, sample_flow_timesteps
from .images import ImageCandidates, from_png_bytes, png_bytes, save_image_grid


class DiffusionRAFTTrainer(StageTrainer):
    """RAFT (Reward rAnked FineTuning) for diffusers pipelines: fine-tunes a LoRA on the best images of each stage.

    Args:
        pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, `StableDiffusion3Pipeline`, `FluxPipeline`
            or `str`): the pipeline, or the id / path to load it from (its `model_index.json` says which). Its
            denoiser (the UNet of SD 1.x / 2.x / XL, the transformer of SD3 / FLUX.1) gets a LoRA adapter, the only
            trained weights; the VAE and the text encoders stay frozen.
        reward_funcs: a reward function called with `images=` (PIL images), `prompts=` and the other dataset columns,
            returning one float per image (`raft_trainer.rewards.AestheticScorer`, `CLIPScore`, `PickScore`, `HPSv2`,
            `JPEGCompressibility`, or your own), or a list of these weighted by `args.reward_weights`.
        args (`DiffusionRAFTConfig`): the configuration.
        train_dataset (`datasets.Dataset`): text prompts in a `prompt` column; the other columns go to the rewards.
        eval_dataset (`datasets.Dataset` or a dict of them, *optional*): held-out prompts, in the same form, for
            `evaluate()` and `eval_strategy`: one image per prompt, from the same starting noise at every
            evaluation, scored by the reward functions (`eval_reward`, and `eval_reward/<name>` per function), and a
            grid of the images with their rewards in `output_dir/eval/`.
        callbacks, optimizers: as in `transformers.Trainer`.
    """

    sample_image_column = "image"
    card_library = "diffusers"

    def __init__(
        self,
        pipeline: DiffusionPipeline | str,
        reward_funcs=None,
        args: DiffusionRAFTConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        callbacks=None,
        optimizers=(None, None),
        *,
        reward_fn=None,
    ):
        reward_funcs = one_reward_argument(reward_funcs, reward_fn)
        if args is None:
            name = pipeline if isinstance(pipeline, str) else pipeline.name_or_path or "sd"
            args = DiffusionRAFTConfig(output_dir=f"{name.rstrip('/').split('/')[-1]}-RAFT")
        if args.eval_strategy != "no" and eval_dataset is None:  # before a pipeline is loaded
            raise ValueError(
                f"eval_strategy={args.eval_strategy.value!r} needs held-out prompts: pass eval_dataset, or set "
                "eval_strategy='no'."
            )
        datasets = {"train_dataset": train_dataset}
        for name, dataset in (eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}).items():
            if dataset is not None:
                datasets[f"eval_dataset{f'[{name!r}]' if name else ''}"] = dataset
        for name, dataset in datasets.items():
            validate_prompt_dataset(dataset, name)
            if not isinstance(dataset[0]["prompt"], str):
                raise ValueError(f"DiffusionRAFTTrainer needs text prompts; {name}['prompt'] holds chat messages.")
        if isinstance(pipeline, str):
            kwargs = with_torch_dtypes(args.pipeline_init_kwargs or {})
            pipeline = DiffusionPipeline.from_pretrained(pipeline, **kwargs)  # model_index.json names the class
        self.family = pipeline_family(pipeline, args)  # SD 1.x / 2.x, SDXL, SD3 or FLUX.1: what differs between them
        args = self.family.args  # with the family's own size, steps and guidance where the configuration left None
        self.pipeline = pipeline
        # The denoiser alone does not say which pipeline it is from.
        self.base_model_name = pipeline.name_or_path or None
        self.card_training, self.card_usage = self.family.card_training, self.family.card_usage
        pipeline.vae.requires_grad_(False)
        for text_encoder in self.family.text_encoders():
            text_encoder.requires_grad_(False)
        denoiser = self.family.denoiser.requires_grad_(False)
        denoiser.add_adapter(
            LoraConfig(
                r=args.lora_rank,
                lora_alpha=args.lora_alpha or args.lora_rank,
                init_lora_weights="gaussian",
                target_modules=args.lora_target_modules or self.family.lora_target_modules,
            )
        )
        cast_training_params(denoiser, dtype=torch.float32)  # LoRA weights train in float32 even in a half pipeline
        # Training draws timesteps from the full schedule (DDPM noise, or the flow's sigmas) of the pipeline's.
        self.noise_scheduler = self.family.training_scheduler()
        super().__init__(
            denoiser,
            as_reward_functions(reward_funcs),
            args,
            train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collate_latent_examples,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        pipeline.to(self.accelerator.device)
        pipeline.set_progress_bar_config(disable=True)

    # ----------------------------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------------------------

    def generate(self, prompt_indices: list[int], prompts: list) -> ImageCandidates:
        args = self.args
        per_prompt = args.generations_per_prompt
        all_prompts = [prompt for prompt in prompts for _ in range(per_prompt)]
        # A generator seeded by (seed, stage, process): the stage's images do not depend on what ran before,
        # so a resumed run draws the same ones.
        stage_seed = np.random.SeedSequence([args.seed, self.current_stage(), args.process_index]).generate_state(1)
        generator = torch.Generator().manual_seed(int(stage_seed[0]))
        images = self._sample_images(all_prompts, generator, show_progress=not self._quiet())
        return {"image": images, "prompt_position": each_prompt_repeated(len(prompts), per_prompt)}

    def _sample_images(self, prompts: list[str], generator, show_progress: bool = False) -> list:
        """The pipeline's images of `prompts` with the training sampler's settings, in batches of
        `generation_batch_size`; `generator` is one generator, or one per prompt."""
        images = []
        batch_size = self.args.generation_batch_size
        with eval_mode(self.family.denoiser):
            for start in tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not show_progress):
                batch = prompts[start : start + batch_size]
                with self.accelerator.autocast():  # generation in the run's mixed precision, like training
                    images += self.pipeline(
                        prompt=batch,
                        generator=generator[start : start + batch_size] if isinstance(generator, list) else generator,
                        output_type="pil",
                        **self.family.generation_kwargs(len(batch)),
                    ).images
        return images

    def evaluation_candidates(self, prompts: list) -> ImageCandidates:
        """One image per held-out prompt, each from noise of its own generator seeded by (`seed`, process, its
        place): every evaluation starts from the same noise, so the images show what training changed."""
        seeds = np.random.SeedSequence([self.args.seed, self.args.process_index]).generate_state(len(prompts))
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        return {"image": self._sample_images(prompts, generators), "prompt_position": list(range(len(prompts)))}

    def write_evaluation_media(self, candidates: ImageCandidates, metric_key_prefix: str) -> None:
        """`output_dir/eval/<prefix>_step_<step>.png`: the main process's held-out images with their rewards."""
        if self.accelerator.is_main_process:
            name = f"{metric_key_prefix}_step_{self.state.global_step:06d}.png"
            captions = [f"{reward:.3f}" for reward in candidates["reward"]]
            save_image_grid(candidates["image"], captions, os.path.join(self.args.output_dir, "eval", name))

    def reward_inputs(self, candidates: ImageCandidates) -> dict:
        return {"images": candidates["image"]}

    def candidates_to_file(self, candidates: ImageCandidates) -> dict:
        return {**candidates, "image": [png_bytes(image) for image in candidates["image"]]}

    def candidates_from_file(self, saved: dict) -> ImageCandidates:
        return {**saved, "image": [from_png_bytes(data) for data in saved["image"]]}

    # ----------------------------------------------------------------------------------------------------------------
    # Stage files
    # ----------------------------------------------------------------------------------------------------------------

    def stage_file_columns(self, candidates: ImageCandidates) -> dict[str, list]:
        return {name: candidates[name] for name in ("prompt_index", "prompt")}

    def write_stage_media(self, stage: int, candidates: ImageCandidates, rows: dict[str, list]) -> dict[str, list]:
        """Save the stage's images and return the stage file's `image` column: the PNG of each saved candidate,
        relative to the `stages` folder (kept candidates always, the others with `save_candidate_images`; `None` when
        not saved). Also writes the stage's grid of kept images with their rewards."""
        stages_dir = os.path.join(self.args.output_dir, "stages")
        paths = []
        for index, (image, is_kept) in enumerate(zip(candidates["image"], rows["selected"])):
            path = None
            if is_kept or self.args.save_candidate_images:
                path = f"stage_{stage:03d}/{index:05d}.png"
                with atomic_path(os.path.join(stages_dir, path)) as partial:
                    image.save(partial, format="PNG")
            paths.append(path)
        kept_indices = [index for index, is_kept in enumerate(rows["selected"]) if is_kept]
        save_image_grid(
            [candidates["image"][index] for index in kept_indices],
            [f"{rows['reward'][index]:.3f}" for index in kept_indices],
            os.path.join(stages_dir, f"stage_{stage:03d}_grid.png"),
        )
        return {"image": paths}

    # ----------------------------------------------------------------------------------------------------------------
    # Fine-tuning
    # ----------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def training_examples(self, candidates: ImageCandidates, kept_indices: list[int]) -> list[dict]:
        """The kept images as what the loss needs, computed once a stage with the frozen encoders: the VAE's latent
        distribution (sampled afresh at every step, as when training on the images) and the denoiser's conditioning
        (the prompt's text-encoder states; SDXL, SD3 and FLUX also pooled states, SDXL the image's size ids)."""
        pipeline, device = self.pipeline, self.accelerator.device
        examples = []
        for start in range(0, len(kept_indices), self.args.generation_batch_size):
            batch = kept_indices[start : start + self.args.generation_batch_size]
            images = [candidates["image"][i] for i in batch]
            pixels = pipeline.image_processor.preprocess(images)
            moments = pipeline.vae.encode(pixels.to(device, pipeline.vae.dtype)).latent_dist.parameters
            conditioning = self.family.conditioning([candidates["prompt"][i] for i in batch], images, device)
            for row in range(len(batch)):
                example = {"latent_moments": moments[row].cpu()}
                examples.append({**example, **{name: value[row].cpu() for name, value in conditioning.items()}})
        return examples

    def batches_per_stage(self) -> int:
        return self.args.iterations_per_stage * self.args.gradient_accumulation_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss on a batch of kept images, drawn in this order: the latent sample, the noise, the timesteps.

        Denoising (SD 1.x / 2.x, SDXL): noise the latents at uniform DDPM timesteps and regress the UNet's prediction
        on the scheduler's target (the noise, or the velocity for v-prediction). Flow matching (SD3, FLUX.1): draw
        sigma with `weighting_scheme`, take the point (1 - sigma) x0 + sigma noise and regress the transformer's
        prediction on the velocity noise - x0 (see `flow_matching.py`)."""
        args, scheduler = self.args, self.noise_scheduler
        latents = self.family.latents(DiagonalGaussianDistribution(inputs["latent_moments"]).sample())
        noise = torch.randn_like(latents)
        if self.family.objective == "flow_matching":
            timesteps, sigmas = sample_flow_timesteps(
                scheduler, latents.shape[0], args.weighting_scheme, args.logit_mean, args.logit_std, args.mode_scale
            )
            timesteps, sigmas = timesteps.to(latents.device), sigmas.to(latents.device)
            noisy_latents = flow_noisy_latents(latents, noise, sigmas)
            prediction = self.family.predict(model, noisy_latents, timesteps, inputs)
            return flow_matching_loss(
                prediction, noisy_latents, latents, noise, sigmas, args.weighting_scheme, args.precondition_outputs
            )
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy_latents = scheduler.add_noise(latents, noise, timesteps)
        target = denoising_target(scheduler, latents, noise, timesteps)
        prediction = self.family.predict(model, noisy_latents, timesteps, inputs)
        return denoising_loss(prediction, target, scheduler, timesteps, args.snr_gamma)

    # ----------------------------------------------------------------------------------------------------------------
    # Saving and loading the LoRA
    # ----------------------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the LoRA in the diffusers format of the pipeline's family (`pipeline.load_lora_weights(output_dir)`
        loads it) and, outside checkpoints, the RAFT model card."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        denoiser = self.accelerator.unwrap_model(self.model)
        os.makedirs(output_dir, exist_ok=True)
        staging = tempfile.mkdtemp(dir=output_dir)  # written whole, then moved: never a half-written file
        try:
            self.family.save_lora(staging, denoiser, LORA_WEIGHT_NAME)
            os.replace(os.path.join(staging, LORA_WEIGHT_NAME), os.path.join(output_dir, LORA_WEIGHT_NAME))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not _internal_call:
            self.create_model_card(tags=["diffusers", "lora", *self.family.hub_tags], output_dir=output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # The Trainer only knows transformers / peft checkpoints; ours hold the LoRA in the diffusers format.
        state_dict = self.family.read_lora(resume_from_checkpoint, LORA_WEIGHT_NAME)
        denoiser = self.accelerator.unwrap_model(model or self.model)
        result = set_peft_model_state_dict(denoiser, state_dict, adapter_name="default")
        if result.unexpected_keys:
            raise ValueError(
                f"{resume_from_checkpoint} holds LoRA weights this {self.family.display_name} "
                f"{self.family.denoiser_name} does not have: resume with the pipeline and lora settings it was "
                "trained with."
            )
