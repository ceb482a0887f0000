"""What the diffusion examples share: the flags naming their models (with `--tiny`, tiny random models built
locally, so an example runs offline), argument parsing with an example's own defaults, and the train / evaluate /
report step."""

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset
from trl import TrlParser

from .diffusion_raft_config import DiffusionRAFTConfig
from .diffusion_raft_trainer import DiffusionRAFTTrainer
from .image_evaluation import format_evaluation, train_and_evaluate_images
from .rewards import AestheticScorer, CLIPScore, HPSv2, JPEGCompressibility, JPEGIncompressibility, PickScore
from .rewards.aesthetic import AESTHETIC_HEAD_REPO
from .rewards.hps import HPS_FILES, HPS_REPO
from .rewards.pickscore import PICKSCORE_MODEL, PICKSCORE_PROCESSOR
from .tiny import tiny_aesthetic_scorer, tiny_clip_score, tiny_hpsv2, tiny_pickscore, tiny_sd_pipeline

# Prompts of the examples that take a prompt file, when none is given.
DEFAULT_PROMPTS = [
    "a cat in the style of Claude Monet",
    "a lighthouse on a cliff at sunset, oil painting",
    "a red bicycle leaning against a blue door",
    "an astronaut riding a horse on the moon",
    "a bowl of ramen in the style of Hokusai",
    "a fox reading a book under a tree, watercolor",
    "a glass teapot filled with flowers",
    "a robot playing chess in a park",
    "a castle made of ice under the northern lights",
    "two dogs wearing sunglasses on a beach",
]
# `--tiny` for the one-family examples: their defaults are sized for real models (K=8, 100 iterations, accumulation),
# which the tiny models need none of to show every step work.
TINY_LORA_EXAMPLE_DEFAULTS = dict(
    prompts_per_stage=4,
    num_generations=2,
    iterations_per_stage=4,
    num_inference_steps=4,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
    eval_images_per_prompt=1,
)
REWARDS = ("aesthetic", "clip_score", "pickscore", "hpsv2", "jpeg_compressibility", "jpeg_incompressibility")

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
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={"help": "The Stable Diffusion pipeline, id or path."},
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
class PipelineLoRAArguments(ImageScriptArguments):
    """The examples that fine-tune one pipeline family (SDXL, SD3, FLUX.1) on a prompt file with a chosen reward."""

    prompts: str | None = field(
        default=None, metadata={"help": "A text file of prompts, one a line; omitted: the built-in prompts."}
    )
    reward: str = field(
        default="aesthetic",
        metadata={
            "help": f"The reward RAFT ranks by and the evaluation reports: {', '.join(REWARDS)}; several, "
            "comma-separated (pickscore,aesthetic), are summed with the weights --reward_weights gives."
        },
    )
    pickscore_model: str = field(default=PICKSCORE_MODEL, metadata={"help": "PickScore's CLIPModel, id or folder."})
    pickscore_processor: str = field(
        default=PICKSCORE_PROCESSOR, metadata={"help": "PickScore's CLIP processor, id or folder."}
    )
    hps_checkpoint: str = field(
        default=HPS_REPO, metadata={"help": "The HPS checkpoint: a .pt file, a folder holding it, or a Hub repo."}
    )
    hps_version: str = field(
        default="v2.1", metadata={"help": "HPS version: v2.1 or v2.0.", "choices": list(HPS_FILES)}
    )

    def __post_init__(self):
        super().__post_init__()
        names = self.reward_names()
        unknown = [name for name in names if name not in REWARDS]
        if unknown or not names or len(set(names)) < len(names):
            raise ValueError(
                f"--reward must be one of {', '.join(REWARDS)}, or several of them comma-separated, each once "
                f"(got {self.reward!r})."
            )

    def reward_names(self) -> list[str]:
        return [name.strip() for name in self.reward.split(",") if name.strip()]


def read_prompts(path: str | None) -> list[str]:
    """The non-blank lines of `path`, stripped; `DEFAULT_PROMPTS` when no file is given."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    if not os.path.isfile(path):
        raise ValueError(f"--prompts {path!r}: no such file (give a text file of prompts, one a line).")
    with open(path, encoding="utf-8") as file:
        prompts = [line.strip() for line in file if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path!r} holds no prompt (one a line, blank lines skipped).")
    return prompts


def parse_args(
    script_arguments_class, paper_defaults: dict, argv: list[str] | None, tiny_defaults: dict | None = None
):
    """The script's arguments and the DiffusionRAFTConfig, with the example's defaults (and with `--tiny` the tiny
    models' defaults, then the example's own `tiny_defaults`) for every field not given on the command line or in the
    `--config` YAML."""

    def parse(defaults: dict):
        parser = TrlParser((script_arguments_class, DiffusionRAFTConfig))
        parser.set_defaults(**defaults)
        return parser.parse_args_and_config(argv)

    script_args, args = parse(paper_defaults)
    if script_args.tiny:
        script_args, args = parse({**paper_defaults, **TINY_DEFAULTS, **(tiny_defaults or {})})
    return script_args, args


def load_pipeline(script_args: ImageScriptArguments, tiny_pipeline: Callable = tiny_sd_pipeline):
    """The tiny pipeline (`tiny_pipeline()`), or the id / path the trainer loads (with `pipeline_init_kwargs`)."""
    return tiny_pipeline() if script_args.tiny else script_args.pretrained_model_name_or_path


def load_reward(script_args: PipelineLoRAArguments, name: str) -> Callable:
    """The reward `name` (one of `REWARDS`) as the flags configure it; tiny models with `--tiny` (the JPEG rewards need
    no model, so `--tiny` changes nothing for them)."""
    tiny = script_args.tiny
    if name == "aesthetic":
        return load_aesthetic_scorer(script_args)
    if name == "clip_score":
        return load_clip_score(script_args)
    if name == "pickscore":
        return tiny_pickscore() if tiny else PickScore(script_args.pickscore_model, script_args.pickscore_processor)
    if name == "hpsv2":
        return tiny_hpsv2() if tiny else HPSv2(script_args.hps_checkpoint, version=script_args.hps_version)
    return JPEGCompressibility() if name == "jpeg_compressibility" else JPEGIncompressibility()


def run_pipeline_lora_example(
    paper_defaults: dict, tiny_pipeline: Callable, argv: list[str] | None, tiny_defaults: dict | None = None
) -> dict:
    """The body of the one-family examples: parse, read the prompts, RAFT with the `--reward` (or the rewards, weighted
    by `--reward_weights`), evaluate each before and after on the same prompts, save the LoRA; returns the summary."""
    tiny_defaults = {**TINY_LORA_EXAMPLE_DEFAULTS, **(tiny_defaults or {})}
    script_args, args = parse_args(PipelineLoRAArguments, paper_defaults, argv, tiny_defaults)
    prompts = read_prompts(script_args.prompts)
    rewards = {name: load_reward(script_args, name) for name in script_args.reward_names()}
    trainer = DiffusionRAFTTrainer(
        load_pipeline(script_args, tiny_pipeline),
        list(rewards.values()),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    return run_and_report(trainer, {"prompts": prompts}, rewards, script_args.eval_images_per_prompt)


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
