"""The paper's text-image alignment (Dong et al. 2023, section 4.2): Stable Diffusion 1.5 at 512x512 fine-tuned with
RAFT to draw what the prompt says, rewarded by the OpenCLIP score (100 x cosine of image and prompt embeddings).

1. Prompts: one a line from `--prompts`, or the built-in `DEFAULT_PROMPTS`.
2. RAFT with the paper's settings: batch 1, 800 iterations a stage, lr 3e-6, a rank-4 UNet LoRA; 10 prompts a
   stage, best 1 of 20 images kept.
3. Evaluation before and after on the prompts: CLIP score (and with `--eval_aesthetic` the aesthetic score), mean ±
   std, printed and written to `output_dir/evaluation.json`.

    python examples/diffusion/raft_sd_text_alignment.py --prompts my_prompts.txt --output_dir runs/sd-align
    python examples/diffusion/raft_sd_text_alignment.py --tiny   # tiny random models, offline, a minute on a CPU

Every DiffusionRAFTConfig field is a flag; the model flags (`raft_trainer.diffusion.scripts`) are those of every
diffusion example.
"""

from dataclasses import dataclass, field

from datasets import Dataset

from raft_trainer import DiffusionRAFTTrainer
from raft_trainer.diffusion.scripts import (  # noqa: F401 (DEFAULT_PROMPTS: this example's built-in prompts)
    DEFAULT_PROMPTS,
    ImageScriptArguments,
    load_aesthetic_scorer,
    load_clip_score,
    load_pipeline,
    parse_args,
    read_prompts,
    run_and_report,
)

PAPER_DEFAULTS = dict(
    output_dir="runs/raft-sd-text-alignment",
    height=512,
    width=512,
    num_stages=10,
    prompts_per_stage=10,
    num_generations=20,
    iterations_per_stage=800,
    per_device_train_batch_size=1,
    learning_rate=3e-6,
    lora_rank=4,
    guidance_scale=7.5,
    num_inference_steps=50,
    save_strategy="epoch",
)


@dataclass
class TextAlignmentArguments(ImageScriptArguments):
    prompts: str | None = field(
        default=None, metadata={"help": "A text file of prompts, one a line; omitted: the built-in prompts."}
    )
    eval_aesthetic: bool = field(
        default=False, metadata={"help": "Also evaluate the aesthetic score (loads the aesthetic predictor)."}
    )


def main(argv: list[str] | None = None) -> dict:
    script_args, args = parse_args(TextAlignmentArguments, PAPER_DEFAULTS, argv)
    prompts = read_prompts(script_args.prompts)
    clip_score = load_clip_score(script_args)
    trainer = DiffusionRAFTTrainer(
        load_pipeline(script_args), clip_score, args=args, train_dataset=Dataset.from_dict({"prompt": prompts})
    )
    reward_functions = {"clip_score": clip_score}
    if script_args.eval_aesthetic:
        reward_functions["aesthetic"] = load_aesthetic_scorer(script_args)
    return run_and_report(trainer, {"prompts": prompts}, reward_functions, script_args.eval_images_per_prompt)


if __name__ == "__main__":
    main()
