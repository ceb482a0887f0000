import json
import math
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .stages.selection import SelectionRule


def require(condition: bool, message: str) -> None:
    """Reject a bad configuration value before anything expensive happens."""
    if not condition:
        raise ValueError(message)


def keyword_arguments(value: dict | str | None, name: str) -> dict | None:
    """A `from_pretrained` kwargs field, given as a dict or as JSON text (from the command line)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(
                f'{name} must be a dict or JSON text such as \'{{"torch_dtype": "bfloat16"}}\' ({error}).'
            ) from None
    require(value is None or isinstance(value, dict), f"{name} must be a dict or JSON text (got {value!r}).")
    for key in ("torch_dtype", "dtype"):
        dtype = (value or {}).get(key)
        require(
            not isinstance(dtype, str) or dtype == "auto" or isinstance(getattr(torch, dtype, None), torch.dtype),
            f"{name}[{key!r}] = {dtype!r} is not a torch dtype (e.g. 'bfloat16', 'float16', 'auto').",
        )
    return value


def with_torch_dtypes(kwargs: dict) -> dict:
    """`kwargs` with dtype names ("float16") turned into torch dtypes, for loaders that want those (diffusers)."""
    converted = dict(kwargs)
    for key in ("torch_dtype", "dtype"):
        if isinstance(converted.get(key), str) and converted[key] != "auto":
            converted[key] = getattr(torch, converted[key])
    return converted


@dataclass
class StageConfig(TrainingArguments):
    r"""
    The settings of the RAFT stage cycle, shared by [`RAFTConfig`] and the diffusion config.

    One Trainer epoch is one RAFT stage, so `num_train_epochs` is set to `num_stages`, and the learning-rate schedule
    spans the whole run. Logging defaults to once per stage.

    Parameters:
        num_stages (`int`, *optional*, defaults to `4`):
            T in the paper: how many generate, rank and fine-tune stages to run.
        prompts_per_stage (`int`, *optional*, defaults to `16`):
            b in the paper: how many prompts each stage draws, and so how many samples it keeps.
        num_generations (`int`, *optional*, defaults to `8`):
            K in the paper: candidates generated per prompt (local ranking) or pool size over `prompts_per_stage`
            (global ranking). The acceptance ratio is 1/K.
        ranking (`str`, *optional*, defaults to `"local"`):
            `"local"` keeps the best of K candidates for each prompt; `"global"` draws `prompts_per_stage * K`
            prompts with one candidate each and keeps the top `prompts_per_stage` of that pool (paper appendix A.2).
        shuffle_dataset (`bool`, *optional*, defaults to `True`):
            Stages draw their prompts from a fresh random order of the dataset on every pass over it (from `seed`);
            `False` draws them in the dataset's own order (a curriculum the dataset is sorted by, say).
        reward_threshold (`float` or `None`, *optional*, defaults to `None`):
            A candidate is kept only if its reward is at least this (rejection sampling: with a 0/1 reward, 1 keeps
            the correct ones only). With local ranking a prompt whose best candidate falls short keeps nothing that
            stage; with global ranking the top of the pool is taken among those that reach it; Reinforce-Rej trains
            on the accepted (+1) and the rejected (-1) samples of every prompt that has both. `None`: no threshold.
        kept_per_prompt (`int`, *optional*, defaults to `1`):
            Local ranking: how many of a prompt's candidates may be kept, best first, distinct completions only
            (copies of a kept text are skipped). `num_generations` with `reward_threshold` keeps every accepted
            candidate, as RAFT does with verifiable rewards (Xiong et al. 2025).
        reward_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            One weight per reward function; a candidate's reward is the weighted sum. `None` weighs them all 1.
        generation_batch_size (`int`, *optional*, defaults to `64`):
            Sequences per forward call when generating and scoring, independent of the training batch size.
        offload_inactive_models (`bool`, *optional*, defaults to `False`):
            Keep reward models that are modules (and `RAFTConfig`'s KL reference model) on the CPU, moving each to
            the accelerator only while it scores: generation and fine-tuning then have the accelerator to
            themselves, as RAFT's decoupled phases allow.
        log_completions (`bool`, *optional*, defaults to `False`):
            Print each stage's kept samples (prompt, completion or image, reward) with their rewards, and log them
            as a `stage_samples` table to Weights & Biases and trackio when they are in `report_to`.
        num_completions_to_print (`int` or `None`, *optional*, defaults to `None`):
            How many kept samples `log_completions` prints, drawn at random; `None` prints them all.
        max_empty_stages (`int`, *optional*, defaults to `3`):
            A stage that keeps nothing (no candidate reached `reward_threshold`, or every prompt's Reinforce-Rej
            group was all right or all wrong) is passed over: logged with `num_kept` 0, its optimizer steps made
            without any update, so the learning-rate schedule and resume stay as planned. The run stops with an
            error when this many stages in a row keep nothing.

        > Sample allocation

        sample_allocation (`str`, *optional*, defaults to `"uniform"`):
            How a stage's `prompts_per_stage x num_generations` candidates are shared among its prompts. `"uniform"`:
            `num_generations` each. `"gvm"`: GVM-RAFT (Yao et al. 2025): a first draw of `gvm_first_draw` per prompt
            measures each prompt's acceptance rate p (reward at least `reward_threshold`) and the mean gradient norm
            G of its accepted candidates; the rest go to the prompts in proportion to G / sqrt(p + gvm_alpha /
            p^(gvm_beta - 1)), none to a prompt with no accepted candidate (`stages/budget.py`). Both draws join
            the stage's pool. Needs local ranking and `reward_threshold`; each process shares out its own prompts'
            budget.
        settled_prompt_weight (`float` or `None`, *optional*, defaults to `None`):
            A curriculum: a prompt whose candidates were all accepted or all rejected (`reward_threshold`) the last
            time it was drawn is drawn with this weight, against 1 for the others, so that a stage spends its samples
            on prompts that still teach something. Each stage then draws its prompts at random by weight, without
            repeats; `None`: no curriculum, every prompt once per pass over the dataset. Needs `reward_threshold`.
        gvm_first_draw (`int` or `None`, *optional*, defaults to `None`):
            Candidates per prompt in GVM's first draw, below `num_generations`; `None`: half of it.
        gvm_alpha (`float`, *optional*, defaults to `1e-3`), gvm_beta (`float`, *optional*, defaults to `2.0`):
            The allocation's alpha and beta (GVM's defaults): alpha / p^(beta - 1) keeps prompts that are rarely
            solved from drawing a large share on a noisy estimate of p.
    """

    num_stages: int = field(default=4, metadata={"help": "T: number of generate, rank and fine-tune stages."})
    prompts_per_stage: int = field(
        default=16, metadata={"help": "b: prompts drawn per stage, and so samples kept per stage."}
    )
    num_generations: int = field(
        default=8,
        metadata={"help": "K: candidates per prompt (local ranking) or pool size over b (global). Acceptance 1/K."},
    )
    ranking: str = field(
        default="local",
        metadata={
            "help": "'local': keep the best of K per prompt; 'global': keep the top b of a pool of b*K prompts.",
            "choices": ["local", "global"],
        },
    )
    shuffle_dataset: bool = field(
        default=True, metadata={"help": "Draw prompts in a random order on every pass (False: the dataset's order)."}
    )
    reward_threshold: float | None = field(
        default=None, metadata={"help": "Keep a candidate only if its reward is at least this (None: no threshold)."}
    )
    kept_per_prompt: int = field(
        default=1,
        metadata={"help": "Local ranking: keep up to this many distinct candidates per prompt, best first."},
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (the reward is the weighted sum)."}
    )
    generation_batch_size: int = field(
        default=64, metadata={"help": "Sequences per forward call when generating and scoring."}
    )
    offload_inactive_models: bool = field(
        default=False,
        metadata={"help": "Keep reward models (and the KL reference) on the CPU except while they score."},
    )
    log_completions: bool = field(
        default=False,
        metadata={"help": "Print each stage's kept samples and log them as a table to wandb / trackio."},
    )
    num_completions_to_print: int | None = field(
        default=None, metadata={"help": "How many kept samples `log_completions` prints (None: all)."}
    )
    max_empty_stages: int = field(
        default=3, metadata={"help": "Stop with an error when this many stages in a row keep nothing."}
    )
    sample_allocation: str = field(
        default="uniform",
        metadata={
            "help": "'uniform': num_generations candidates per prompt; 'gvm': GVM-RAFT's two draws, the second "
            "shared by acceptance rate and gradient norm.",
            "choices": ["uniform", "gvm"],
        },
    )
    settled_prompt_weight: float | None = field(
        default=None,
        metadata={
            "help": "Curriculum: the draw weight, against 1, of a prompt whose last draw was all accepted or all "
            "rejected (None: no curriculum)."
        },
    )
    gvm_first_draw: int | None = field(
        default=None, metadata={"help": "GVM: candidates per prompt in the first draw (None: num_generations // 2)."}
    )
    gvm_alpha: float = field(default=1e-3, metadata={"help": "GVM: the alpha of G / sqrt(p + alpha / p^(beta-1))."})
    gvm_beta: float = field(default=2.0, metadata={"help": "GVM: the beta of G / sqrt(p + alpha / p^(beta-1))."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log; 'epoch' logs once per RAFT stage."})

    def __post_init__(self):
        require(self.num_stages >= 1, f"num_stages must be >= 1 (got {self.num_stages}).")
        require(self.prompts_per_stage >= 1, f"prompts_per_stage must be >= 1 (got {self.prompts_per_stage}).")
        require(
            self.num_generations >= 1,
            f"num_generations must be >= 1 (got {self.num_generations}): it is K, the candidates per prompt.",
        )
        require(
            self.ranking in ("local", "global"),
            f"ranking must be 'local' or 'global' (got {self.ranking!r}).",
        )
        require(
            self.reward_threshold is None or math.isfinite(self.reward_threshold),
            f"reward_threshold must be a finite number or None (got {self.reward_threshold}): no reward passes a NaN "
            "threshold; set None to keep the best candidates by rank.",
        )
        require(self.max_empty_stages >= 1, f"max_empty_stages must be >= 1 (got {self.max_empty_stages}).")
        require(
            self.kept_per_prompt >= 1,
            f"kept_per_prompt must be >= 1 (got {self.kept_per_prompt}); num_generations keeps every accepted one.",
        )
        require(
            self.kept_per_prompt == 1 or self.ranking == "local",
            f"kept_per_prompt={self.kept_per_prompt} needs ranking='local' (global ranking keeps one candidate per "
            "drawn prompt): set ranking='local' or kept_per_prompt=1.",
        )
        require(
            self.generation_batch_size >= 1, f"generation_batch_size must be >= 1 (got {self.generation_batch_size})."
        )
        self.check_sample_allocation()
        require(
            self.max_steps in (-1, None),
            f"max_steps is not used by RAFT (got {self.max_steps}): set num_stages and the per-stage length instead.",
        )
        self.num_train_epochs = self.num_stages
        super().__post_init__()

    def check_sample_allocation(self) -> None:
        require(
            self.settled_prompt_weight is None
            or (0 < self.settled_prompt_weight <= 1 and self.reward_threshold is not None),
            f"settled_prompt_weight must be in (0, 1] with a reward_threshold (got {self.settled_prompt_weight} and "
            f"reward_threshold={self.reward_threshold}): a prompt is settled when all its candidates reach the "
            "threshold or none does.",
        )
        require(
            self.sample_allocation in ("uniform", "gvm"),
            f"sample_allocation must be 'uniform' or 'gvm' (got {self.sample_allocation!r}).",
        )
        if self.sample_allocation != "gvm":
            return
        require(
            self.ranking == "local" and self.reward_threshold is not None,
            "sample_allocation='gvm' shares a stage's samples among its prompts by their acceptance rates: it needs "
            f"ranking='local' (got {self.ranking!r}) and a reward_threshold that accepts a candidate (got "
            f"{self.reward_threshold}); with a 0/1 reward, reward_threshold=1.",
        )
        if self.gvm_first_draw is None:
            self.gvm_first_draw = max(1, self.num_generations // 2)
        require(
            1 <= self.gvm_first_draw < self.num_generations,
            f"gvm_first_draw must be at least 1 and below num_generations={self.num_generations} (got "
            f"{self.gvm_first_draw}): the second draw shares out the rest of the prompt's num_generations.",
        )
        require(self.gvm_alpha > 0, f"gvm_alpha must be > 0 (got {self.gvm_alpha}).")
        require(self.gvm_beta >= 1, f"gvm_beta must be >= 1 (got {self.gvm_beta}).")

    def check_processes(self, num_processes: int) -> None:
        """Every process generates for a share of the stage's draw, so there must be a prompt for each."""
        require(
            self.prompts_drawn_per_stage >= num_processes,
            f"prompts_per_stage={self.prompts_per_stage} draws {self.prompts_drawn_per_stage} prompts a stage, fewer "
            f"than the {num_processes} processes: give every process at least one.",
        )

    def selection_rule(self) -> SelectionRule:
        """How a stage chooses its kept set (`stages/selection.py`); a trainer's config adds its own criteria."""
        return SelectionRule(self.ranking, self.prompts_per_stage, self.kept_per_prompt, self.reward_threshold)

    @property
    def prompts_drawn_per_stage(self) -> int:
        """Prompts generated for each stage: b with local ranking, b*K (one candidate each) with global ranking."""
        return self.prompts_per_stage * (self.num_generations if self.ranking == "global" else 1)

    @property
    def generations_per_prompt(self) -> int:
        """Candidates generated for each drawn prompt."""
        return self.num_generations if self.ranking == "local" else 1
