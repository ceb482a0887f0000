"""RAFT for Stable Diffusion XL: a UNet LoRA fine-tuned, stage after stage, on the best of the images SDXL draws
for your prompts, with the denoising loss (the SDXL conditioning: both text encoders, the pooled embedding and each
image's size and crop ids).

    python examples/diffusion/raft_sdxl.py --prompts my_prompts.txt --output_dir runs/sdxl-aesthetic
    python examples/diffusion/raft_sdxl.py --reward jpeg_compressibility   # DDPO's reward: nothing to download
    python examples/diffusion/raft_sdxl.py --reward pickscore,aesthetic --reward_weights 1.0 0.5   # preferences
    python examples/diffusion/raft_sdxl.py --tiny   # tiny random models, offline, seconds on a CPU

Every DiffusionRAFTConfig field is a flag; `--reward` (aesthetic, clip_score, pickscore, hpsv2, jpeg_compressibility,
jpeg_incompressibility, or several comma-separated, summed with `--reward_weights`), `--prompts` and the model flags
are those of `raft_trainer.diffusion.scripts`. Load the result with
`StableDiffusionXLPipeline.from_pretrained(base).load_lora_weights(output_dir)`.
"""

from raft_trainer.diffusion.scripts import run_pipeline_lora_example
from raft_trainer.diffusion.tiny import tiny_sdxl_pipeline

DEFAULTS = dict(
    pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0",
    output_dir="runs/raft-sdxl",
    height=1024,
    width=1024,
    num_stages=4,
    prompts_per_stage=10,
    num_generations=8,
    generation_batch_size=4,
    iterations_per_stage=100,
    per_device_train_batch_size=1,
    gradient_accumulation_steps=4,
    learning_rate=1e-5,
    lora_rank=8,
    guidance_scale=5.0,
    num_inference_steps=30,
    save_strategy="epoch",
)


def main(argv: list[str] | None = None) -> dict:
    return run_pipeline_lora_example(DEFAULTS, tiny_sdxl_pipeline, argv)


if __name__ == "__main__":
    main()
