"""What a comparison runs: the shared budget and settings of every method, checked before anything expensive."""

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field, replace

from ..stage_config import require
from ..tasks.arithmetic import WORDINGS

METHODS = ("raft", "raft++", "reinforce_rej", "ppo", "grpo", "rloo")
RAFT_FAMILY = ("raft", "raft++", "reinforce_rej")  # our RAFTTrainer, with loss_type = the method's name
TASKS = ("arithmetic",)  # verifiable tasks on the real model, with a rule reward instead of a reward model
# The paper's ablations (Tables 4 to 6): the RAFT setting each one varies, its row label, and the paper's values.
ABLATIONS = {
    "K": ("num_generations", "raft-K{:g}", (8, 16, 32)),
    "temperature": ("temperature", "raft-T{:g}", (0.7, 0.85, 1.0)),
    "beta": ("beta", "raft-beta{:g}", (0.0, 0.005, 0.01, 0.1)),
}

# With --task arithmetic: the RAFT family against GRPO and RLOO on the real model at equal completions (24 stages of
# 4 prompts x 8 = 768 completions of at most 16 tokens, a fresh draw as often as GRPO's updates), the setting of
# Xiong et al. 2025 scaled to a CPU: RAFT keeps every distinct correct answer not cut off, one optimizer
# step of 8 a stage (RAFT++ two), learning rate 2e-5 (the rate every method picked from 1e-5 / 2e-5 / 4e-5, in
# BENCHMARKS.md).
TASK_DEFAULTS = {
    "arithmetic": dict(
        output_dir="runs/compare-arithmetic",
        methods=["raft", "raft++", "reinforce_rej", "grpo", "rloo"],
        num_stages=24,
        prompts_per_stage=4,
        num_generations=8,
        completions_per_update=32,
        per_device_train_batch_size=8,
        max_completion_length=16,
        temperature=1.0,
        learning_rates=[2e-5],
        epochs_per_stage=1,
        reward_threshold=1.0,
        kept_per_prompt=8,
        samples_per_stage=8,  # RAFT: one optimizer step a stage
        raft_pp_samples_per_stage=16,  # RAFT++: two, the second off-policy, where its clip acts
        # GRPO and RLOO as users get them (TRL's default): a truncated completion is trained on; with the mask GRPO
        # learned from almost none of its completions on a wording whose answers run long (`equation`). The RAFT
        # family's selection keeps no truncated answer: accepting them, its completions drifted to the length limit.
        mask_truncated_completions=False,
        raft_mask_truncated_completions=True,
        num_eval_prompts=150,
        num_curve_prompts=50,
    )
}


@dataclass
class CompareArguments:
    """The flags of `raft-compare` (and the arguments of `raft_trainer.compare.compare`).

    Every method generates the same number of completions: `num_stages * prompts_per_stage * num_generations`, RAFT's
    budget. PPO gets that many episodes and GRPO / RLOO that many completions, `completions_per_update` per optimizer
    update. All share `max_completion_length`, `temperature` and the learning rates tried (`learning_rates`; each
    method keeps the one with the best held-out validation reward at the end).
    """

    task: str | None = field(
        default=None,
        metadata={
            "help": "A verifiable task instead of a reward model: 'arithmetic' (SmolLM2-135M-Instruct, or the "
            "model named, adds two numbers; reward 1 for the exact answer, so the held-out reward is the "
            "accuracy). Sets its own defaults (docs/comparison.md).",
            "choices": list(TASKS),
        },
    )
    level: str = field(
        default="sums",
        metadata={
            "help": "With --task arithmetic: 'sums' (a + b, a and b in 1..20) or 'two_digit' (sums and differences "
            "of two-digit numbers).",
            "choices": ["sums", "two_digit"],
        },
    )
    wording: str = field(
        default="question",
        metadata={
            "help": "With --task arithmetic: how the problems are asked, 'question' ('What is 3 + 4? Reply with the "
            "number only.'), 'imperative', 'equation' or 'words' (raft_trainer.tasks.arithmetic.WORDINGS); the "
            "problems and splits are the same under every wording.",
            "choices": list(WORDINGS),
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The SFT policy (id or path). Omitted: the offline miniature world (with --task: "
            "smollm2-135m-instruct)."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The reward model (sequence classification, num_labels=1); PPO needs it to share the "
            "policy's tokenizer."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset id or path for `datasets.load_dataset`, with a 'prompt' column."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split the methods train on."})
    dataset_test_split: str | None = field(
        default="test",
        metadata={"help": "Held-out split; its 'chosen' column, if any, gives the perplexity."},
    )
    output_dir: str = field(default="runs/compare", metadata={"help": "Where results and plots are written."})
    methods: list[str] = field(
        default_factory=lambda: ["raft", "ppo", "grpo"],
        metadata={"help": f"Methods to compare, among {', '.join(METHODS)}."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the miniature world, the training runs and evaluations."})
    num_stages: int = field(default=8, metadata={"help": "RAFT stages; also the number of curve checkpoints."})
    prompts_per_stage: int = field(default=64, metadata={"help": "RAFT's b: prompts per stage."})
    num_generations: int = field(
        default=8, metadata={"help": "K: RAFT's candidates per prompt, and GRPO's / RLOO's group size."}
    )
    completions_per_update: int = field(
        default=64, metadata={"help": "PPO, GRPO, RLOO: completions generated per optimizer update."}
    )
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Micro-batch size of every method."})
    max_completion_length: int = field(default=48, metadata={"help": "Maximum new tokens, for every method."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature, in training and evaluation."})
    learning_rates: list[float] = field(
        default_factory=lambda: [3e-4, 1e-3, 3e-3],
        metadata={
            "help": "Learning rates tried for every method (linear decay); the best by validation reward is kept."
        },
    )
    epochs_per_stage: int = field(default=2, metadata={"help": "RAFT: SFT passes over each stage's kept set."})
    beta: float = field(default=0.0, metadata={"help": "RAFT: KL coefficient of the ranking score."})
    reward_threshold: float | None = field(
        default=None,
        metadata={
            "help": "RAFT family: keep the candidates with at least this reward (1 with a 0/1 reward: the "
            "correct ones; None: the best of K)."
        },
    )
    kept_per_prompt: int = field(
        default=1, metadata={"help": "RAFT, RAFT++: candidates kept per prompt at most (distinct ones)."}
    )
    samples_per_stage: int | None = field(
        default=None,
        metadata={
            "help": "RAFT, RAFT++: kept samples per pass of a stage (None: prompts_per_stage). Reinforce-Rej "
            "takes half of the stage's candidates (it trains on every candidate of the prompts it keeps)."
        },
    )
    raft_pp_samples_per_stage: int | None = field(
        default=None,
        metadata={
            "help": "RAFT++ alone: kept samples per pass of a stage (None: samples_per_stage). More than a "
            "micro-batch makes the later steps of a stage off-policy, where RAFT++'s clipped ratio acts; RAFT's SFT "
            "loss has no clip, so RAFT keeps samples_per_stage."
        },
    )
    mask_truncated_completions: bool = field(
        default=False,
        metadata={"help": "Every method: a completion cut off at max_completion_length is not trained on."},
    )
    raft_mask_truncated_completions: bool | None = field(
        default=None,
        metadata={
            "help": "The RAFT family alone: a candidate cut off at max_completion_length is never kept (None: "
            "mask_truncated_completions). For RAFT it is part of what is accepted; for GRPO the mask only takes "
            "the completion out of the loss."
        },
    )
    advantage_baseline: str = field(
        default="none",
        metadata={
            "help": "Reinforce-Rej: 'none' (+1 / -1) or 'group_mean' (minus the prompt's mean advantage).",
            "choices": ["none", "group_mean"],
        },
    )
    dual_clip: float | None = field(
        default=None,
        metadata={
            "help": "RAFT++ and Reinforce-Rej: cap a negative-advantage token's loss at -A * dual_clip (> 1; the "
            "paper's Reinforce-Rej setting: 3.0; None: off)."
        },
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={
            "help": "RAFT++ and Reinforce-Rej: the ratio's upper clipping bound (clip-higher: 0.28; None: epsilon, "
            "0.2). GRPO and RLOO keep TRL's default."
        },
    )
    entropy_coef: float = field(
        default=0.0,
        metadata={
            "help": "RAFT++ and Reinforce-Rej: weight of an entropy bonus on the trained tokens (against the "
            "entropy collapse of learning from accepted answers alone; 0: off)."
        },
    )
    settled_prompt_weight: float | None = field(
        default=None,
        metadata={
            "help": "RAFT family: the curriculum's draw weight of a prompt all right or all wrong in its last draw "
            "(None: none; needs reward_threshold)."
        },
    )
    sample_allocation: str = field(
        default="uniform",
        metadata={
            "help": "RAFT family: 'uniform' (num_generations per prompt) or 'gvm' (GVM-RAFT's allocation, at the "
            "same completions; needs reward_threshold).",
            "choices": ["uniform", "gvm"],
        },
    )
    generation_batch_size: int = field(
        default=256, metadata={"help": "Sequences per generate call for RAFT and for the evaluations."}
    )
    num_eval_prompts: int = field(
        default=200,
        metadata={
            "help": "Held-out prompts: the first num_curve_prompts for the curve, the rest for the final table."
        },
    )
    curve_every_stages: int = field(
        default=1,
        metadata={
            "help": "Evaluate the curve each time a method has generated this many RAFT stages' worth of "
            "completions (it must divide num_stages, so that the run's end is a point): 1 reads every stage, a "
            "larger value makes a long comparison cheaper."
        },
    )
    num_curve_prompts: int = field(
        default=40,
        metadata={
            "help": "Held-out validation prompts evaluated along the run (the curve) and to pick the "
            "learning rate; left out of the final table."
        },
    )
    ablation: str | None = field(
        default=None,
        metadata={
            "help": "Run RAFT alone, once per value of: K (Table 4), temperature (Table 5) or beta (Table 6).",
            "choices": list(ABLATIONS),
        },
    )
    ablation_values: list[float] | None = field(
        default=None, metadata={"help": "The ablated values (default: the paper's)."}
    )
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Sample with vLLM in every training run (colocated, on the GPU; needs pip install vllm): the "
            "RAFT family through RAFTConfig.use_vllm, GRPO and RLOO through TRL's own use_vllm. The evaluations "
            "sample with transformers either way, so every method is scored alike."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "With --use_vllm: the share of GPU memory vLLM takes, for every method."}
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision for every method (GPU)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Gradient checkpointing for every method."})
    toy_num_pairs: int = field(default=4000, metadata={"help": "Miniature world: preference pairs it generates."})
    cache_dir: str = field(
        default=os.path.join("~", ".cache", "raft-trainer"),
        metadata={"help": "Where the miniature world caches its SFT policy and reward model."},
    )
    quiet: bool = field(default=False, metadata={"help": "Print only the results table."})
    verbose: bool = field(
        default=False, metadata={"help": "Show the libraries' own progress bars, load reports and warnings."}
    )
    summarize: list[str] | None = field(
        default=None,
        metadata={
            "help": "Train nothing: the mean and range over these finished comparisons' output directories "
            "(e.g. one per seed), written to output_dir/summary.md."
        },
    )

    @property
    def completions_budget(self) -> int:
        """Completions every method generates: RAFT's stages x b x K."""
        return self.num_stages * self.prompts_per_stage * self.num_generations

    @property
    def completions_per_stage(self) -> int:
        """One RAFT stage's completions: b x K."""
        return self.prompts_per_stage * self.num_generations

    @property
    def completions_per_checkpoint(self) -> int:
        """The curve is evaluated each time a method has generated this many more completions
        (`curve_every_stages` RAFT stages)."""
        return self.completions_per_stage * self.curve_every_stages

    def validate(self) -> None:
        """A ValueError naming the argument for a bad value (`compare` calls it before loading anything)."""
        unknown = sorted(set(self.methods) - set(METHODS))
        require(not unknown, f"methods: unknown {unknown}; choose among {list(METHODS)}.")
        require(len(self.methods) == len(set(self.methods)) and self.methods, "methods: give each method once.")
        for name in (
            "num_stages",
            "prompts_per_stage",
            "completions_per_update",
            "per_device_train_batch_size",
            "max_completion_length",
            "epochs_per_stage",
            "generation_batch_size",
            "num_curve_prompts",
            "curve_every_stages",
        ):
            require(getattr(self, name) >= 1, f"{name} must be >= 1 (got {getattr(self, name)}).")
        require(
            self.num_generations >= 2,
            f"num_generations must be >= 2 (got {self.num_generations}): GRPO needs "
            "a group of at least 2 completions per prompt, and RAFT a choice.",
        )
        require(self.temperature > 0, f"temperature must be > 0 (got {self.temperature}).")
        require(self.beta >= 0, f"beta must be >= 0 (got {self.beta}).")
        require(
            bool(self.learning_rates) and all(lr > 0 for lr in self.learning_rates),
            f"learning_rates must be positive numbers (got {self.learning_rates}).",
        )
        require(
            self.num_eval_prompts > self.num_curve_prompts,
            f"num_eval_prompts ({self.num_eval_prompts}) must exceed num_curve_prompts ({self.num_curve_prompts}): "
            "the final table is measured on the held-out prompts the curve does not use.",
        )
        require(
            self.num_stages % self.curve_every_stages == 0,
            f"curve_every_stages ({self.curve_every_stages}) must divide num_stages ({self.num_stages}), so that "
            "the curve's last point is the run's end (the learning rate is picked there).",
        )
        per_update = self.completions_per_update
        require(
            self.completions_per_stage % per_update == 0,
            f"completions_per_update ({per_update}) must divide prompts_per_stage x num_generations "
            f"({self.completions_per_stage}), so that every method reaches each curve checkpoint exactly.",
        )
        require(
            per_update % self.per_device_train_batch_size == 0,
            f"completions_per_update ({per_update}) must be a multiple of per_device_train_batch_size "
            f"({self.per_device_train_batch_size}).",
        )
        require(
            per_update % self.num_generations == 0,
            f"completions_per_update ({per_update}) must be a multiple of num_generations "
            f"({self.num_generations}): GRPO and RLOO update on whole groups.",
        )
        require(self.kept_per_prompt >= 1, f"kept_per_prompt must be >= 1 (got {self.kept_per_prompt}).")
        require(
            self.sample_allocation in ("uniform", "gvm"),
            f"sample_allocation must be 'uniform' or 'gvm' (got {self.sample_allocation!r}).",
        )
        require(
            self.advantage_baseline in ("none", "group_mean"),
            f"advantage_baseline must be 'none' or 'group_mean' (got {self.advantage_baseline!r}).",
        )
        require(self.dual_clip is None or self.dual_clip > 1, f"dual_clip must be > 1 or None (got {self.dual_clip}).")
        require(
            self.epsilon_high is None or self.epsilon_high >= 0,
            f"epsilon_high must be >= 0 or None (got {self.epsilon_high}).",
        )
        require(self.entropy_coef >= 0, f"entropy_coef must be >= 0 (got {self.entropy_coef}): 0 turns it off.")
        require(
            self.settled_prompt_weight is None
            or (0 < self.settled_prompt_weight <= 1 and self.reward_threshold is not None),
            f"settled_prompt_weight must be in (0, 1] with --reward_threshold (got {self.settled_prompt_weight}).",
        )
        require(
            self.sample_allocation == "uniform" or self.reward_threshold is not None,
            "sample_allocation='gvm' shares samples out by each prompt's acceptance rate: give --reward_threshold "
            "(1 with the arithmetic task's 0/1 reward, its default).",
        )
        require(
            not (self.use_vllm and "ppo" in self.methods),
            "use_vllm: TRL's PPO samples with transformers only; leave ppo out of --methods, or drop --use_vllm.",
        )
        require(
            0 < self.vllm_gpu_memory_utilization <= 1,
            f"vllm_gpu_memory_utilization must be in (0, 1] (got {self.vllm_gpu_memory_utilization}).",
        )
        require(
            self.samples_per_stage is None or self.samples_per_stage >= 1,
            f"samples_per_stage must be >= 1 or None (got {self.samples_per_stage}).",
        )
        require(
            self.raft_pp_samples_per_stage is None or self.raft_pp_samples_per_stage >= 1,
            f"raft_pp_samples_per_stage must be >= 1 or None (got {self.raft_pp_samples_per_stage}).",
        )
        if self.task is not None:
            require(self.task in TASKS, f"task must be one of {list(TASKS)} (got {self.task!r}).")
            require(
                self.dataset_name is None and self.reward_model_name_or_path is None,
                f"task={self.task!r} brings its own prompts and its rule reward: leave out dataset_name and "
                "reward_model_name_or_path.",
            )
            require(
                self.level in ("sums", "two_digit"),
                f"level must be 'sums' or 'two_digit' (got {self.level!r}).",
            )
            require(self.wording in WORDINGS, f"wording must be one of {list(WORDINGS)} (got {self.wording!r}).")
            require(
                self.num_eval_prompts <= 150,
                f"num_eval_prompts must be at most 150 with task={self.task!r} (got {self.num_eval_prompts}): its "
                "sums have 400 distinct problems, 250 of them for training.",
            )
            require(
                "ppo" not in self.methods,
                "methods: TRL's PPO needs a reward model and a value model, which the verifiable task does not "
                "have; leave ppo out (benchmarks/real_scale_memory.py compares PPO's memory and time).",
            )
        else:
            require(
                (self.level, self.wording) == ("sums", "question"),
                "level and wording choose the arithmetic problems: they need --task arithmetic.",
            )
            require(
                (self.model_name_or_path is None) == (self.reward_model_name_or_path is None)
                and (self.model_name_or_path is None) == (self.dataset_name is None),
                "model_name_or_path, reward_model_name_or_path and dataset_name go together: give all three, or "
                "none for the offline miniature world (or a --task).",
            )
        if self.ablation is not None:
            require(self.ablation in ABLATIONS, f"ablation must be one of {list(ABLATIONS)} (got {self.ablation!r}).")
            for value in self.ablated_values():
                try:
                    self.with_ablated(value)
                except ValueError as error:
                    raise ValueError(f"ablation_values: {value:g} is not a valid {self.ablation}: {error}") from None
        else:
            require(self.ablation_values is None, "ablation_values needs --ablation K, temperature or beta.")

    def check_methods_installed(self) -> None:
        """Refuse, before anything is loaded, what this environment cannot run: PPO needs trl 1.0 to 1.12, and
        `use_vllm` needs vLLM and a GPU."""
        methods = {method for _, method, _ in self.runs()}
        require(
            "ppo" not in methods or importlib.util.find_spec("trl.experimental.ppo") is not None,
            f"methods: ppo needs TRL's PPO (trl.experimental.ppo), which only trl 1.0 to 1.12 have; this "
            f"environment has trl {importlib.metadata.version('trl')}. Install it with "
            'pip install "raft-trainer[compare]" (from a clone: pip install -e ".[compare]"), or leave ppo out of '
            "--methods.",
        )

        if self.use_vllm:
            from trl.import_utils import is_vllm_available

            require(is_vllm_available(), "use_vllm needs vLLM: pip install vllm on a GPU machine, or drop --use_vllm.")
            import torch

            require(
                torch.cuda.is_available(),
                "use_vllm: the comparison colocates vLLM with each run on a GPU, and none is visible; drop it.",
            )

    def ablated_values(self) -> tuple[float, ...]:
        _, _, paper_values = ABLATIONS[self.ablation]
        return tuple(self.ablation_values or paper_values)

    def with_ablated(self, value: float) -> "CompareArguments":
        """These settings with the ablated RAFT setting set to `value` (validated)."""
        setting, _, _ = ABLATIONS[self.ablation]
        value = int(value) if setting == "num_generations" else float(value)
        ablated = replace(self, **{setting: value, "ablation": None, "ablation_values": None, "methods": ["raft"]})
        ablated.validate()
        return ablated

    def runs(self) -> list[tuple[str, str, "CompareArguments"]]:
        """(row label, method, settings) of each row of the comparison, in order."""
        if self.ablation is None:
            return [(method, method, self) for method in self.methods]
        _, label, _ = ABLATIONS[self.ablation]
        return [(label.format(value), "raft", self.with_ablated(value)) for value in self.ablated_values()]
