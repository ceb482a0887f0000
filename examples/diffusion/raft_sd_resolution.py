"""The paper's resolution adaptation (Dong et al. 2023, section 4.2): Stable Diffusion 1.5 made to draw good images
at 256x256, where it was trained at 512x512, with RAFT and the LAION aesthetic reward.

1. Prompts: the 10 CIFAR-10 labels (optionally in `--prompt_template`, e.g. "a photo of a {}").
2. RAFT with the paper's settings: 10 prompts a stage, best 1 of 20 images kept (acceptance 0.05), 100 iterations
   a stage on them with batch 10, lr 6e-6, a rank-4 UNet LoRA, guidance 7.5, 50 denoising steps.
3. Evaluation before and after, as in the paper's Table 8: aesthetic and CLIP score (mean ± std) on the CIFAR-10
   labels (in-domain) and the CIFAR-100 labels (out-of-domain), printed and written to `output_dir/evaluation.json`,
   with the images before and after in `output_dir/eval/<set>_before.png` and `<set>_after.png`.

    python examples/diffusion/raft_sd_resolution.py --output_dir runs/sd-256
    python examples/diffusion/raft_sd_resolution.py --tiny   # tiny random models, offline, a minute on a CPU

Every DiffusionRAFTConfig field is a flag (`--num_stages 4`, `--learning_rate 1e-5`, ...). Besides the pipeline id,
`--aesthetic_head` takes a local copy of the aesthetic predictor's weights and `--clip_model` / `--clip_pretrained`
name the OpenCLIP model of the CLIP score (`raft_trainer.diffusion.scripts`, shared by the diffusion examples).
"""

from dataclasses import dataclass, field

from datasets import Dataset

from raft_trainer import DiffusionRAFTTrainer
from raft_trainer.diffusion.scripts import (
    ImageScriptArguments,
    load_aesthetic_scorer,
    load_clip_score,
    load_pipeline,
    parse_args,
    run_and_report,
)

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100's fine labels (none of them a CIFAR-10 class), underscores written as spaces.
CIFAR100_LABELS = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse", "mushroom", "oak tree", "orange", "orchid",
    "otter", "palm tree", "pear", "pickup truck", "pine tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf",
    "woman", "worm",
]  # fmt: skip

PAPER_DEFAULTS = dict(
    output_dir="runs/raft-sd-resolution",
    height=256,
    width=256,
    num_stages=10,
    prompts_per_stage=10,
    num_generations=20,
    iterations_per_stage=100,
    per_device_train_batch_size=10,
    learning_rate=6e-6,
    lora_rank=4,
    guidance_scale=7.5,
    num_inference_steps=50,
    save_strategy="epoch",
)


@dataclass
class ResolutionArguments(ImageScriptArguments):
    prompt_template: str = field(
        default="{}", metadata={"help": 'How a label becomes a prompt, with {} for the label: "a photo of a {}".'}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_template.count("{}") != 1:
            raise ValueError(f"--prompt_template must hold {{}} once, for the label (got {self.prompt_template!r}).")


def main(argv: list[str] | None = None) -> dict:
    script_args, args = parse_args(ResolutionArguments, PAPER_DEFAULTS, argv)
    in_domain = [script_args.prompt_template.replace("{}", label) for label in CIFAR10_LABELS]
    out_of_domain = [script_args.prompt_template.replace("{}", label) for label in CIFAR100_LABELS]
    aesthetic = load_aesthetic_scorer(script_args)
    trainer = DiffusionRAFTTrainer(
        load_pipeline(script_args), aesthetic, args=args, train_dataset=Dataset.from_dict({"prompt": in_domain})
    )
    return run_and_report(
        trainer,
        {"in_domain": in_domain, "out_of_domain": out_of_domain},
        {"aesthetic": aesthetic, "clip_score": load_clip_score(script_args)},
        script_args.eval_images_per_prompt,
    )


if __name__ == "__main__":
    main()
