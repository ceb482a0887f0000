"""The paper's resolution adaptation (Dong et al. 2023, section 4.2): Stable Diffusion 1.5 made to draw good images
at 256x256, where it was trained at 512x512, with RAFT and the LAION aesthetic reward.

1. Prompts: the 10 CIFAR-10 labels (optionally in `--prompt_template`, e.g. "a photo of a {}").
2. RAFT with the paper's settings: 10 prompts a stage, best 1 of 20 images kept (acceptance 0.05), 100 iterations
   a stage on them with batch 10, lr 6e-6, a rank-4 UNet LoRA, guidance 7.5, 50 denoising steps.
3. Evaluation before and after, as in the paper's Table 8: aesthetic and CLIP score (mean ± std) on the CIFAR-10
   labels (in-domain) and the CIFAR-100 labels (out-of-domain), printed and written to `output_dir/evaluation.json`.

    python examples/diffusion/raft_sd_resolution.py --output_dir runs/sd-256
    python examples/diffusion/raft_sd_resolution.py --tiny   # tiny random models, offline, a minute on a CPU

Every DiffusionRAFTConfig field is a flag (`--num_stages 4`, `--learning_rate 1e-5`, ...). Besides the pipeline id,
`--aesthetic_head` takes a local copy of the aesthetic predictor's weights and `--clip_model` / `--clip_pretrained`
name the OpenCLIP model of the CLIP score. The code other diffusion examples share lives here.
"""

from dataclasses import dataclass, field

from datasets import Dataset
from trl import TrlParser

from raft_trainer import DiffusionRAFTConfig, DiffusionRAFTTrainer
from raft_trainer.image_evaluation import format_evaluation, train_and_evaluate_images
from raft_trainer.rewards import AestheticScorer, CLIPScore
from raft_trainer.rewards.aesthetic import AESTHETIC_HEAD_REPO
from raft_trainer.toy.tiny_diffusion import tiny_aesthetic_scorer, tiny_clip_score, tiny_sd_pipeline

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
# `--tiny`: the tiny random pipeline makes 32x32 images; a short run is enough to see every step work.
TINY_DEFAULTS = dict(
    height=32, width=32, num_stages=2, num_inference_steps=10, iterations_per_stage=10, eval_images_per_prompt=2
)


@dataclass
class ImageScriptArguments:
    """The models of a diffusion example and its evaluation."""

    tiny: bool = field(
        default=False, metadata={"help": "Tiny random pipeline and reward models built locally: nothing downloaded."}
    )
    pretrained_model_name_or_path: str = field(
        default="runwayml/stable-diffusion-v1-5", metadata={"help": "The Stable Diffusion pipeline, id or path."}
    )
    aesthetic_head: str = field(
        default=AESTHETIC_HEAD_REPO,
        metadata={"help": "LAION aesthetic predictor weights: a .pth file, a folder holding it, or a Hub repo."},
    )
    clip_model: str = field(default="ViT-H-14", metadata={"help": "OpenCLIP model of the CLIP score."})
    clip_pretrained: str = field(default="laion2b_s32b_b79k", metadata={"help": "OpenCLIP weights tag of it."})
    eval_images_per_prompt: int = field(
        default=10, metadata={"help": "Images per prompt in the before / after evaluation."}
    )

    def __post_init__(self):
        if self.eval_images_per_prompt < 1:
            raise ValueError(f"--eval_images_per_prompt must be >= 1 (got {self.eval_images_per_prompt}).")


@dataclass
class ResolutionArguments(ImageScriptArguments):
    prompt_template: str = field(
        default="{}", metadata={"help": 'How a label becomes a prompt, with {} for the label: "a photo of a {}".'}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_template.count("{}") != 1:
            raise ValueError(f"--prompt_template must hold {{}} once, for the label (got {self.prompt_template!r}).")


def parse_args(script_arguments_class, paper_defaults: dict, argv: list[str] | None):
    """The script's arguments and the DiffusionRAFTConfig, with the example's defaults (and with `--tiny` the tiny
    models' defaults) for every field not given on the command line or in the `--config` YAML."""

    def parse(defaults: dict):
        parser = TrlParser((script_arguments_class, DiffusionRAFTConfig))
        parser.set_defaults(**defaults)
        return parser.parse_args_and_config(argv)

    script_args, args = parse(paper_defaults)
    if script_args.tiny:
        script_args, args = parse({**paper_defaults, **TINY_DEFAULTS})
    return script_args, args


def load_pipeline(script_args: ImageScriptArguments):
    """The tiny pipeline, or the id / path the trainer loads (with `pipeline_init_kwargs`)."""
    return tiny_sd_pipeline() if script_args.tiny else script_args.pretrained_model_name_or_path


def load_aesthetic_scorer(script_args: ImageScriptArguments) -> AestheticScorer:
    return tiny_aesthetic_scorer() if script_args.tiny else AestheticScorer(script_args.aesthetic_head)


def load_clip_score(script_args: ImageScriptArguments) -> CLIPScore:
    return tiny_clip_score() if script_args.tiny else CLIPScore(script_args.clip_model, script_args.clip_pretrained)


def run_and_report(
    trainer: DiffusionRAFTTrainer, prompt_sets: dict, reward_functions: dict, images_per_prompt: int
) -> dict:
    """Train with the before / after evaluation, print its table; returns the summary."""
    args = trainer.args
    summary = train_and_evaluate_images(
        trainer, prompt_sets, reward_functions, images_per_prompt, args.resume_from_checkpoint
    )
    if trainer.is_world_process_zero():
        print("\n" + format_evaluation(summary["evaluation"]))
        print(f"Wrote {args.output_dir}/evaluation.json, the LoRA and stages/.")
    return summary


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
