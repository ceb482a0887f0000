"""Evaluate a diffusers pipeline (SD 1.x / 2.x, SDXL, SD3, FLUX.1) with image rewards before and after RAFT: the
paper's Table 8 (aesthetic and CLIP score, mean ± std, on in-domain and out-of-domain prompts)."""

import os
from collections.abc import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ..files import write_json
from ..memory import eval_mode, move_models
from ..reporting.run_log import stage_records
from .images import save_image_grid

EVALUATION_FILE = "evaluation.json"


@torch.no_grad()
def evaluate_images(
    pipeline: DiffusionPipeline,
    prompts: list[str],
    reward_functions: dict[str, Callable],
    images_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    negative_prompt: str | None = None,
    grid_path: str | None = None,
    **generation_kwargs,
) -> dict[str, dict[str, float]]:
    """Generate `images_per_prompt` images for each prompt and score them: `{name: {"mean": .., "std": ..}}` for
    each reward function (called with `images=` and `prompts=`), the std over images (numpy's, ddof=0).

    Image i starts from noise of its own generator, seeded from (`seed`, i): the same seed gives the same noise
    whatever the batch size, so evaluations before and after training compare images from the same starting points.
    `generation_kwargs` go to the pipeline (`height`, `width`, `num_inference_steps`, `guidance_scale`, ...).
    With `grid_path`, the images are also saved there as one grid, each captioned with the first function's reward.
    """
    if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings (got {prompts!r:.80}).")
    if not reward_functions:
        raise ValueError("reward_functions is empty: give at least one {name: reward function}.")
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1 (got {images_per_prompt}).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size}).")
    all_prompts = [prompt for prompt in prompts for _ in range(images_per_prompt)]
    seeds = np.random.SeedSequence(seed).generate_state(len(all_prompts))
    rewards = {name: [] for name in reward_functions}
    all_images = []
    # The UNet (SD 1.x / 2.x, XL) or the transformer (SD3, FLUX.1): a trainer leaves it in training mode.
    denoiser = getattr(pipeline, "unet", None) or pipeline.transformer
    with eval_mode(denoiser):
        for start in range(0, len(all_prompts), batch_size):
            batch = all_prompts[start : start + batch_size]
            if negative_prompt:  # not every pipeline takes one (FLUX.1 needs true_cfg_scale with it)
                generation_kwargs["negative_prompt"] = [negative_prompt] * len(batch)
            images = pipeline(
                prompt=batch,
                generator=[
                    torch.Generator().manual_seed(int(image_seed)) for image_seed in seeds[start : start + len(batch)]
                ],
                output_type="pil",
                **generation_kwargs,
            ).images
            for name, function in reward_functions.items():
                values = list(function(images=images, prompts=batch))
                if len(values) != len(batch):
                    raise ValueError(
                        f"reward function {name!r} returned {len(values)} values for {len(batch)} images."
                    )
                rewards[name] += [float(value) for value in values]
            if grid_path is not None:
                all_images += images
    if grid_path is not None:
        save_image_grid(all_images, [f"{value:.3f}" for value in next(iter(rewards.values()))], grid_path, columns=10)
    return {name: {"mean": float(np.mean(values)), "std": float(np.std(values))} for name, values in rewards.items()}


def train_and_evaluate_images(
    trainer,  # a DiffusionRAFTTrainer (evaluation sits below the trainers: it imports none)
    prompt_sets: dict[str, list[str]],
    reward_functions: dict[str, Callable],
    images_per_prompt: int,
    resume_from_checkpoint: str | bool | None = None,
) -> dict:
    """Evaluate the trainer's pipeline on each prompt set, run RAFT, evaluate again with the same seed and
    generation settings, save the LoRA, and write `output_dir/evaluation.json` and the grids of the images
    (`output_dir/eval/<set>_before.png`, `<set>_after.png`: the same starting noise in the same places). Returns
    `{"stages": per-stage records, "evaluation": {"settings": .., "before": {set: {reward: {mean, std}}}, "after":
    ..}}`.

    Before training the LoRA is the identity (its up-projection starts at zero), so "before" is the base pipeline.
    Every process evaluates the same images; the first one writes the file.
    """
    args = trainer.args
    move_models(reward_functions.values(), trainer.accelerator.device)  # the trainer moves only its own
    settings = dict(
        images_per_prompt=images_per_prompt,
        seed=args.seed,
        batch_size=args.generation_batch_size,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
    )
    if args.max_sequence_length is not None:  # SD3 / FLUX.1: generate as the trainer does
        settings["max_sequence_length"] = args.max_sequence_length

    def evaluate(moment: str) -> dict:
        def grid(name: str) -> str | None:  # the images of every evaluation, side by side in output_dir/eval/
            return (
                os.path.join(args.output_dir, "eval", f"{name}_{moment}.png")
                if trainer.is_world_process_zero()
                else None
            )

        return {
            name: evaluate_images(trainer.pipeline, prompts, reward_functions, grid_path=grid(name), **settings)
            for name, prompts in prompt_sets.items()
        }

    before = evaluate("before")
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    after = evaluate("after")
    trainer.save_model()
    evaluation = {
        "settings": {**settings, "num_prompts": {name: len(prompts) for name, prompts in prompt_sets.items()}},
        "before": before,
        "after": after,
    }
    if trainer.is_world_process_zero():
        write_json(os.path.join(args.output_dir, EVALUATION_FILE), evaluation)
    return {"stages": stage_records(trainer), "evaluation": evaluation}


def format_evaluation(evaluation: dict) -> str:
    """The before / after evaluation as a text table: one row per prompt set and moment, "mean ± std" per reward."""
    rows = [["prompts", "", *next(iter(evaluation["before"].values()))]]
    for set_name in evaluation["before"]:
        for moment in ("before", "after"):
            scores = evaluation[moment][set_name].values()
            rows.append([set_name, moment, *(f"{score['mean']:.4g} ± {score['std']:.3g}" for score in scores)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
