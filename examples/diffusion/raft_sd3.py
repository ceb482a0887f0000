"""RAFT for Stable Diffusion 3 / 3.5: a transformer LoRA fine-tuned, stage after stage, on the best of the images
SD3 draws for your prompts, with the flow-matching loss (velocity target; training sigmas drawn as in diffusers' SD3
script: `--weighting_scheme logit_normal` by default, or mode, uniform, sigma_sqrt, cosmap).

    python examples/diffusion/raft_sd3.py --prompts my_prompts.txt --output_dir runs/sd35-aesthetic
    python examples/diffusion/raft_sd3.py --reward clip_score \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-3-medium-diffusers
    python examples/diffusion/raft_sd3.py --tiny   # tiny random models, offline, seconds on a CPU

Every DiffusionRAFTConfig field is a flag; `--reward`, `--prompts` and the model flags are those of
`raft_trainer.diffusion.scripts`. Load the result with
`StableDiffusion3Pipeline.from_pretrained(base).load_lora_weights(output_dir)`.
"""

from raft_trainer.diffusion.scripts import run_pipeline_lora_example
from raft_trainer.diffusion.tiny import tiny_sd3_pipeline

DEFAULTS = dict(
    pretrained_model_name_or_path="stabilityai/stable-diffusion-3.5-medium",
    output_dir="runs/raft-sd3",
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
    guidance_scale=4.5,
    num_inference_steps=28,
    weighting_scheme="logit_normal",
    save_strategy="epoch",
)
TINY = dict(max_sequence_length=16)  # the tiny T5 needs no 256-token prompts


def main(argv: list[str] | None = None) -> dict:
    return run_pipeline_lora_example(DEFAULTS, tiny_sd3_pipeline, argv, TINY)


if __name__ == "__main__":
    main()
