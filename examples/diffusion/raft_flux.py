"""RAFT for FLUX.1: a transformer LoRA fine-tuned, stage after stage, on the best of the images FLUX draws for your
prompts, with the flow-matching loss on its packed latents (FLUX.1-dev's distilled guidance is `--guidance_scale`,
in generation and training; FLUX.1-schnell has none and ignores it).

    python examples/diffusion/raft_flux.py --prompts my_prompts.txt --output_dir runs/flux-aesthetic
    python examples/diffusion/raft_flux.py --tiny   # tiny random models, offline, seconds on a CPU

Every DiffusionRAFTConfig field is a flag; `--reward`, `--prompts` and the model flags are those of
`raft_trainer.diffusion.scripts`. Load the result with
`FluxPipeline.from_pretrained(base).load_lora_weights(output_dir)`.
FLUX.1-dev is gated on the Hub: accept its licence and log in first.
"""

from raft_trainer.diffusion.scripts import run_pipeline_lora_example
from raft_trainer.diffusion.tiny import tiny_flux_pipeline

DEFAULTS = dict(
    pretrained_model_name_or_path="black-forest-labs/FLUX.1-dev",
    pipeline_init_kwargs={"torch_dtype": "bfloat16"},
    output_dir="runs/raft-flux",
    height=512,
    width=512,
    num_stages=4,
    prompts_per_stage=10,
    num_generations=8,
    generation_batch_size=4,
    iterations_per_stage=100,
    per_device_train_batch_size=1,
    gradient_accumulation_steps=4,
    learning_rate=1e-5,
    lora_rank=8,
    guidance_scale=3.5,
    num_inference_steps=28,
    max_sequence_length=512,
    weighting_scheme="logit_normal",
    save_strategy="epoch",
)
TINY = dict(max_sequence_length=16)  # the tiny T5 needs no 512-token prompts


def main(argv: list[str] | None = None) -> dict:
    return run_pipeline_lora_example(DEFAULTS, tiny_flux_pipeline, argv, TINY)


if __name__ == "__main__":
    main()
