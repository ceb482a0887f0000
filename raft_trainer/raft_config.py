import dataclasses
import logging
from dataclasses import dataclass, field

from transformers import ContinuousBatchingConfig, TrainingArguments

from .stage_config import StageConfig, keyword_arguments, require
from .stages.selection import SelectionRule

# Sampling settings RAFTConfig has fields for: generation_kwargs may not set them (GenerationConfig's name: ours).
SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_completion_length",
    "max_tokens": "max_completion_length",
    "num_return_sequences": "num_generations",
    "n": "num_generations",
    "do_sample": "temperature",
    "cache_implementation": "cache_implementation",
}
# GRPOConfig fields that RAFTConfig takes under another name (docs/grpo_config.md).
GRPO_EQUIVALENTS = {
    "beta": "kl_loss_coef",
    "num_iterations": "epochs_per_stage",
    "delta": "dual_clip",
    "vllm_importance_sampling_cap": "vllm_importance_sampling_clip_max",  # its deprecated name
    "use_transformers_paged": "use_transformers_continuous_batching",  # its deprecated name
}
# GRPOConfig fields named like RAFTConfig's that mean something else there, and GRPO's own bookkeeping of how its
# updates fall into rounds of generation: none is carried over (beta is, as kl_loss_coef).
GRPO_NOT_CARRIED = {"beta", "loss_type", "generation_batch_size", "steps_per_generation"}


@dataclass
class RAFTConfig(StageConfig):
    r"""
    Configuration of [`RAFTTrainer`]: RAFT for causal language models.

    Besides the stage settings below and in [`StageConfig`] (`num_stages`, `prompts_per_stage`, `num_generations`,
    `ranking`, `reward_weights`, `generation_batch_size`), the `transformers.TrainingArguments` fields apply to the
    fine-tuning phase (optimizer, scheduler, batch size, precision, gradient checkpointing, logging, saving), but for
    the run's length: `max_steps` is refused and `num_train_epochs` is set to `num_stages`.

    Parameters:
        temperature (`float`, *optional*, defaults to `1.0`):
            lambda in the paper: sampling temperature of the candidates.
        top_k (`int`, *optional*, defaults to `0`):
            Sample from the `top_k` most likely tokens only; `0` disables it.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling: sample from the smallest set of tokens whose probability reaches `top_p`.
        min_p (`float` or `None`, *optional*, defaults to `None`):
            Sample only tokens whose probability is at least `min_p` times the most likely token's (0.01-0.2 is
            usual); `None` disables it. Like `top_k` and `top_p` it only narrows which tokens can be drawn.
        repetition_penalty (`float`, *optional*, defaults to `1.0`):
            Penalise every token already in the prompt or the completion so far (transformers' and vLLM's
            definition: a logit divided by it where positive, multiplied where negative). The old log-probs and the
            loss of RAFT++ and Reinforce-Rej read the same penalised distribution, so their ratio starts at 1.
        generation_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Further `GenerationConfig` keywords for sampling (`SamplingParams` with vLLM), e.g.
            `{"no_repeat_ngram_size": 3}`; a sampling setting RAFTConfig has its own field for must be set there.
            What they change is for sampling only, as `top_k`.
        cache_implementation (`str` or `None`, *optional*, defaults to `None`):
            The key-value cache `generate` keeps (`"static"`, ...; transformers' `GenerationConfig` field). `None`:
            the model's own, or RAFT's prompt-once cache, which encodes each prompt once for its K samples.
        use_transformers_continuous_batching (`bool`, *optional*, defaults to `False`):
            Sample with transformers' continuous batching over a paged key-value cache (`generate_batch`) instead
            of `generate` with RAFT's prompt-once cache (GRPO's name; BENCHMARKS.md compares the two).
        transformers_continuous_batching_config (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keywords for transformers' `ContinuousBatchingConfig` (`max_batch_tokens`, `num_blocks`,
            `max_memory_percent`, ...; a dict, or JSON text on the command line). `None`: its defaults.
        chat_template_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keywords for the tokenizer's `apply_chat_template` when chat prompts are rendered (e.g.
            `{"enable_thinking": false}`).
        num_generations_eval (`int` or `None`, *optional*, defaults to `None`):
            Completions sampled per held-out prompt by `evaluate()`; `eval_reward` is their mean. `None`: one.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Let models and tokenizers given by id run the Python code they ship (the policy, the reference, a
            candidate model and reward models). Off unless you trust the source.
        max_prompt_length (`int` or `None`, *optional*, defaults to `256`):
            Prompts longer than this many tokens are dropped from the dataset (the count is logged); the paper
            drops prompts over 256 tokens. `None` keeps every prompt.
        max_completion_length (`int`, *optional*, defaults to `128`):
            Maximum number of generated tokens per candidate.
        mask_truncated_completions (`bool`, *optional*, defaults to `False`):
            A candidate cut off at `max_completion_length` (no end-of-sequence token) is never kept, nor trained on.
        beta (`float`, *optional*, defaults to `0.0`):
            KL coefficient: with `beta > 0` candidates are ranked by r - beta * (log p(y|x) - log p_ref(y|x))
            (paper Eq. 5), p_ref being the frozen initial model. With `0` no reference model is loaded.
        epochs_per_stage (`int`, *optional*, defaults to `2`):
            Passes of `prompts_per_stage` samples a stage trains on. The Trainer fixes its step count up front, so a
            stage always makes `epochs_per_stage * ceil(prompts_per_stage / batch)` steps, drawing shuffled passes
            over whatever it kept: with more kept than `prompts_per_stage` (`kept_per_prompt > 1`) the passes go on
            through the kept set, with fewer they repeat it. The learning-rate schedule and resume stay exact.
        samples_per_stage (`int` or `None`, *optional*, defaults to `None`):
            How many kept samples make one of a stage's `epochs_per_stage` passes, and so its step count; `None`:
            `prompts_per_stage`, what best-of-K keeps. Raise it when a stage keeps more (`kept_per_prompt > 1`,
            Reinforce-Rej), so that every kept sample is trained on.

        > Loss (the RAFT family of Xiong et al. 2025)

        loss_type (`str`, *optional*, defaults to `"raft"`):
            `"raft"`: the SFT loss on the kept samples. `"raft++"`: the same samples, each token's loss the
            PPO-clipped importance-weighted one, -min(rho, clip(rho, 1 - epsilon, 1 + epsilon_high)) with
            rho = pi / pi_old (pi_old: the policy that sampled the stage), token-mean over the batch.
            `"reinforce_rej"`: prompts whose candidates all got the same reward are dropped; every candidate of
            the others is trained with the same clipped loss and its reward as advantage, or with `reward_threshold`
            +1 for an accepted and -1 for a rejected sample (the paper's rewards for verifiable answers), so that
            wrong answers are pushed down. Needs local ranking.
        epsilon (`float`, *optional*, defaults to `0.2`):
            The lower clipping bound of the ratio (TRL's name), for `"raft++"` and `"reinforce_rej"`; in [0, 1).
        epsilon_high (`float` or `None`, *optional*, defaults to `None`):
            The upper clipping bound (clip-higher: 0.28); `None` uses `epsilon`.
        advantage_baseline (`str`, *optional*, defaults to `"none"`):
            `"reinforce_rej"`: what is subtracted from a kept sample's advantage (its reward, or +1 / -1 with
            `reward_threshold`). `"none"`: nothing, the paper's +1 / -1. `"group_mean"`: the mean advantage of its
            prompt's kept samples (GRPO's centring without the scaling: TRL's `scale_rewards="none"`), so that a
            prompt mostly right pushes its few wrong answers down harder than its right ones up.
        dual_clip (`float` or `None`, *optional*, defaults to `None`):
            Dual clip for `"raft++"` and `"reinforce_rej"`: a token with a negative advantage has its loss capped at
            -A * dual_clip, so a sample the stage's policy found unlikely cannot push the loss without bound
            (Minimal-RL's Reinforce-Rej and verl use 3.0). Must be > 1; `None` disables it.
        disable_dropout (`bool` or `None`, *optional*, defaults to `None`):
            Turn off the policy's dropout (TRL's name). The sampling log-probs are taken without dropout, so with it
            on the ratio pi / pi_old is not 1 even on a stage's first step. `None`: on for `"raft++"` and
            `"reinforce_rej"`, off for `"raft"` (whose SFT loss has no ratio).
        top_entropy_quantile (`float`, *optional*, defaults to `1.0`):
            `"raft++"` and `"reinforce_rej"`: only the tokens whose sampling entropy is in the top quantile of the
            optimizer step's completion tokens are trained (Wang et al. 2025, "Beyond the 80/20 rule": 0.2); `1.0`
            trains every token, `0.0` only the highest-entropy one.
        entropy_coef (`float`, *optional*, defaults to `0.0`):
            `"raft++"` and `"reinforce_rej"`: subtract `entropy_coef` times the mean token entropy of the trained
            tokens from the loss (an exploration bonus against entropy collapse); `0` disables it.
        cast_lm_head_to_fp32 (`bool`, *optional*, defaults to `False`):
            Compute the policy's (and the reference's) logits in float32 under bf16 or fp16 training, so that the
            log-probs of the ratio and the KL term are not rounded (the ScaleRL recipe). Needs an lm_head not tied
            to the input embeddings, and not adapted by PEFT.
        kl_loss_coef (`float`, *optional*, defaults to `0.0`):
            Weight of a KL loss to the initial model (the low-variance k3 estimator, per token); 0.001 in the
            paper's runs. A frozen reference is then loaded (or the adapter disabled under PEFT).
        log_entropy (`bool`, *optional*, defaults to `False`):
            Log `entropy`, the sampling policy's mean token entropy on each stage's samples (the sign of RAFT++'s
            entropy collapse). RAFT++ and Reinforce-Rej compute it with the log-probs they need anyway; plain RAFT
            pays one forward pass over the stage's candidates.

        > Candidates

        candidate_source (`str`, *optional*, defaults to `"model"`):
            Where a stage's candidates come from: `"model"` samples them; `"dataset"` ranks the completions of the
            trainer's `candidate_dataset` instead (expert or human responses; prompts it lacks are dropped);
            `"both"` ranks those completions together with the model's samples (paper section 4.3).
        use_vllm (`bool`, *optional*, defaults to `False`):
            Sample the candidates with vLLM (TRL's `VLLMGeneration`, needs `pip install vllm` and a GPU) instead of
            `transformers`' `generate`; the policy's weights are pushed to vLLM at the start of every stage.
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            `"colocate"`: vLLM runs in each training process and shares its GPU; `"server"`: requests go to a
            `trl vllm-serve` server at `vllm_server_base_url`.
        vllm_server_base_url (`str` or `None`, *optional*, defaults to `None`):
            The vLLM server's URL in server mode (`None`: `http://0.0.0.0:8000`).
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Share of the GPU's memory vLLM may take in colocate mode.
        vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
            GPUs that hold one vLLM engine in colocate mode; must divide the number of processes.
        vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            In colocate mode, vLLM frees its weights and cache between stages, so that fine-tuning has the GPU to
            itself (RAFT's one model at a time); they come back, with the new weights, at the next stage.
        vllm_importance_sampling_correction (`bool`, *optional*, defaults to `True`):
            With `use_vllm` and `"raft++"` / `"reinforce_rej"`: weigh each token's loss by the importance ratio
            pi_old / pi_vllm between the policy's own log-prob of the sampled token and vLLM's, bounded as
            `vllm_importance_sampling_mode` says (TRL's correction for the sampler's numerical drift).
        vllm_importance_sampling_mode (`str`, *optional*, defaults to `"sequence_mask"`):
            `"token_truncate"`, `"token_mask"`, `"sequence_truncate"` or `"sequence_mask"` (TRL's modes): per token
            or per sequence (the product of a completion's token ratios), out-of-bound ratios clipped to the bounds
            or set to 0.
        vllm_importance_sampling_clip_max (`float` or `None`, *optional*, defaults to `3.0`):
            The importance ratio's upper bound C_max; `None`: none.
        vllm_importance_sampling_clip_min (`float` or `None`, *optional*, defaults to `None`):
            The lower bound C_min; `None`: none.
        model_init_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` is given as a string (a dict,
            or JSON text on the command line: `'{"dtype": "bfloat16"}'`).
    """

    temperature: float = field(default=1.0, metadata={"help": "lambda: sampling temperature of the candidates."})
    top_k: int = field(default=0, metadata={"help": "Sample from the top_k most likely tokens only; 0 disables it."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold; 1.0 disables it."})
    min_p: float | None = field(
        default=None, metadata={"help": "Sample only tokens at least min_p times as likely as the best (None: off)."}
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "Penalise tokens already in the prompt or completion (1.0: off); the loss reads it too."},
    )
    generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Further GenerationConfig (vLLM: SamplingParams) keywords for sampling."}
    )
    cache_implementation: str | None = field(
        default=None, metadata={"help": "generate's key-value cache ('static', ...); None: RAFT's prompt-once cache."}
    )
    use_transformers_continuous_batching: bool = field(
        default=False,
        metadata={"help": "Sample with transformers' continuous batching (generate_batch) instead of generate."},
    )
    transformers_continuous_batching_config: dict | str | None = field(
        default=None, metadata={"help": "Keywords for transformers' ContinuousBatchingConfig (a dict, or JSON text)."}
    )
    chat_template_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keywords for apply_chat_template when chat prompts are rendered."}
    )
    num_generations_eval: int | None = field(
        default=None, metadata={"help": "Completions per held-out prompt in evaluate() (None: one)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Let models and tokenizers given by id run the code they ship."}
    )
    max_prompt_length: int | None = field(
        default=256, metadata={"help": "Prompts longer than this many tokens are dropped (paper: 256)."}
    )
    max_completion_length: int = field(default=128, metadata={"help": "Maximum generated tokens per candidate."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Never keep a candidate cut off at max_completion_length (no eos)."}
    )
    beta: float = field(
        default=0.0,
        metadata={"help": "KL coefficient: rank by r - beta*(log p - log p_ref); 0 loads no reference model."},
    )
    epochs_per_stage: int = field(
        default=2, metadata={"help": "Passes of prompts_per_stage samples over each stage's kept set."}
    )
    samples_per_stage: int | None = field(
        default=None,
        metadata={"help": "Kept samples per pass of a stage (its step count); None: prompts_per_stage."},
    )
    loss_type: str = field(
        default="raft",
        metadata={
            "help": "'raft' (SFT on the kept samples), 'raft++' (PPO-clipped ratio) or 'reinforce_rej'.",
            "choices": ["raft", "raft++", "reinforce_rej"],
        },
    )
    epsilon: float = field(
        default=0.2, metadata={"help": "Lower clipping bound of the ratio (raft++, reinforce_rej)."}
    )
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clipping bound of the ratio (None: epsilon; clip-higher: 0.28)."}
    )
    advantage_baseline: str = field(
        default="none",
        metadata={
            "help": "reinforce_rej: subtract nothing ('none': +1 / -1) or the prompt's mean ('group_mean').",
            "choices": ["none", "group_mean"],
        },
    )
    dual_clip: float | None = field(
        default=None,
        metadata={
            "help": "Cap a negative-advantage token's loss at -A * dual_clip (> 1; Minimal-RL: 3.0; None: off)."
        },
    )
    disable_dropout: bool | None = field(
        default=None,
        metadata={"help": "Turn off the policy's dropout (None: on for raft++ and reinforce_rej, off for raft)."},
    )
    top_entropy_quantile: float = field(
        default=1.0,
        metadata={"help": "raft++ / reinforce_rej: train only the top quantile of tokens by entropy (1.0: all)."},
    )
    entropy_coef: float = field(
        default=0.0, metadata={"help": "raft++ / reinforce_rej: weight of an entropy bonus in the loss (0: off)."}
    )
    cast_lm_head_to_fp32: bool = field(
        default=False, metadata={"help": "Compute the logits in float32 (an untied lm_head without an adapter)."}
    )
    kl_loss_coef: float = field(default=0.0, metadata={"help": "Weight of a k3 KL loss to the initial model."})
    log_entropy: bool = field(
        default=False,
        metadata={"help": "Log the policy's token entropy on each stage's samples (free for raft++, reinforce_rej)."},
    )
    candidate_source: str = field(
        default="model",
        metadata={
            "help": "Candidates from 'model' samples, the trainer's candidate_dataset ('dataset'), or 'both'.",
            "choices": ["model", "dataset", "both"],
        },
    )
    use_vllm: bool = field(default=False, metadata={"help": "Sample the candidates with vLLM (needs vllm and a GPU)."})
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "'colocate' (vLLM in each process) or 'server' (trl vllm-serve).",
            "choices": ["colocate", "server"],
        },
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "The vLLM server's URL in server mode (None: http://0.0.0.0:8000)."}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Share of the GPU's memory vLLM may take in colocate mode."}
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "GPUs per vLLM engine in colocate mode (must divide the process count)."}
    )
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata={"help": "Colocate mode: vLLM frees its weights and cache while the policy trains."}
    )
    vllm_importance_sampling_correction: bool = field(
        default=True,
        metadata={
            "help": "use_vllm with raft++ / reinforce_rej: weigh tokens by pi_old / pi_vllm (TRL's correction)."
        },
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={
            "help": "How the importance ratio is bounded: per token or sequence, truncated or masked.",
            "choices": ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"],
        },
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=3.0, metadata={"help": "The importance ratio's upper bound (None: none)."}
    )
    vllm_importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "The importance ratio's lower bound (None: none)."}
    )
    model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "from_pretrained kwargs when the model is given by name (a dict, or JSON text)."},
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Initial learning rate (paper: 2e-5)."})

    def __post_init__(self):
        require(self.temperature > 0, f"temperature must be > 0 (got {self.temperature}).")
        require(self.top_k >= 0, f"top_k must be >= 0 (got {self.top_k}); 0 disables it.")
        require(0 < self.top_p <= 1, f"top_p must be in (0, 1] (got {self.top_p}).")
        require(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            f"max_prompt_length must be >= 1 or None (got {self.max_prompt_length}).",
        )
        require(
            self.max_completion_length >= 1, f"max_completion_length must be >= 1 (got {self.max_completion_length})."
        )
        require(self.min_p is None or 0 <= self.min_p <= 1, f"min_p must be in [0, 1] or None (got {self.min_p}).")
        require(
            self.repetition_penalty > 0,
            f"repetition_penalty must be > 0 (got {self.repetition_penalty}); 1.0 disables it.",
        )
        self.generation_kwargs = keyword_arguments(self.generation_kwargs, "generation_kwargs")
        own_fields = sorted(set(self.generation_kwargs or {}) & SAMPLING_FIELDS.keys())
        require(
            not own_fields,
            f"generation_kwargs sets {own_fields}, which RAFTConfig has fields for: set "
            f"{', '.join(SAMPLING_FIELDS[name] for name in own_fields)} instead.",
        )
        self.chat_template_kwargs = keyword_arguments(self.chat_template_kwargs, "chat_template_kwargs")
        self.transformers_continuous_batching_config = keyword_arguments(
            self.transformers_continuous_batching_config, "transformers_continuous_batching_config"
        )
        unknown = sorted(
            set(self.transformers_continuous_batching_config or {})
            - {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
        )
        require(
            not unknown,
            f"transformers_continuous_batching_config has keys ContinuousBatchingConfig does not take: {unknown}.",
        )
        require(
            not (self.use_transformers_continuous_batching and self.repetition_penalty != 1.0),
            "use_transformers_continuous_batching drops repetition_penalty (transformers' continuous batching does "
            "not apply it), so the samples would not follow the configured distribution: set repetition_penalty=1.0 "
            "or sample with generate.",
        )
        require(
            not (self.use_transformers_continuous_batching and self.use_vllm),
            "use_transformers_continuous_batching and use_vllm both choose the sampler: set one of them.",
        )
        require(
            self.num_generations_eval is None or self.num_generations_eval >= 1,
            f"num_generations_eval must be >= 1 or None (got {self.num_generations_eval}).",
        )
        require(
            0 <= self.top_entropy_quantile <= 1,
            f"top_entropy_quantile must be in [0, 1] (got {self.top_entropy_quantile}); 1.0 trains every token.",
        )
        require(self.entropy_coef >= 0, f"entropy_coef must be >= 0 (got {self.entropy_coef}); 0 disables it.")
        require(
            self.loss_type != "raft" or (self.top_entropy_quantile == 1 and self.entropy_coef == 0),
            "top_entropy_quantile and entropy_coef shape the clipped losses: set loss_type='raft++' or "
            "'reinforce_rej', or leave them at 1.0 and 0.",
        )
        require(
            self.vllm_importance_sampling_mode
            in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
            "vllm_importance_sampling_mode must be 'token_truncate', 'token_mask', 'sequence_truncate' or "
            f"'sequence_mask' (got {self.vllm_importance_sampling_mode!r}).",
        )
        bounds = (self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max)
        require(
            all(bound is None or bound >= 0 for bound in bounds) and (None in bounds or bounds[0] <= bounds[1]),
            f"vllm_importance_sampling_clip_min / _max must be >= 0 with min <= max, or None (got {bounds}).",
        )
        require(self.beta >= 0, f"beta must be >= 0 (got {self.beta}); 0 disables the KL penalty.")
        require(self.epochs_per_stage >= 1, f"epochs_per_stage must be >= 1 (got {self.epochs_per_stage}).")
        require(
            self.samples_per_stage is None or self.samples_per_stage >= 1,
            f"samples_per_stage must be >= 1 or None (got {self.samples_per_stage}).",
        )
        require(
            self.loss_type in ("raft", "raft++", "reinforce_rej"),
            f"loss_type must be 'raft', 'raft++' or 'reinforce_rej' (got {self.loss_type!r}).",
        )
        require(
            0 <= self.epsilon < 1,
            f"epsilon must be in [0, 1) (got {self.epsilon}): the ratio is clipped below at 1 - epsilon, which must "
            "stay above 0 for the lower clip to act; 0.2 is the usual value.",
        )
        require(
            self.epsilon_high is None or self.epsilon_high >= 0,
            f"epsilon_high must be >= 0 or None (got {self.epsilon_high}).",
        )
        require(
            self.dual_clip is None or self.dual_clip > 1,
            f"dual_clip must be > 1 or None (got {self.dual_clip}): it caps the loss of a negative-advantage token at "
            "-A * dual_clip, above the clipped ratio's 1 + epsilon_high (Minimal-RL: 3.0).",
        )
        require(self.kl_loss_coef >= 0, f"kl_loss_coef must be >= 0 (got {self.kl_loss_coef}); 0 disables it.")
        require(
            self.advantage_baseline in ("none", "group_mean"),
            f"advantage_baseline must be 'none' or 'group_mean' (got {self.advantage_baseline!r}).",
        )
        require(
            self.advantage_baseline == "none" or self.loss_type == "reinforce_rej",
            f"advantage_baseline={self.advantage_baseline!r} centres Reinforce-Rej's advantages; loss_type="
            f"{self.loss_type!r} trains every kept sample with advantage 1: set loss_type='reinforce_rej' or "
            "advantage_baseline='none'.",
        )
        if self.loss_type == "reinforce_rej":
            require(
                self.ranking == "local" and self.kept_per_prompt == 1,
                "loss_type='reinforce_rej' keeps every candidate of the prompts whose rewards differ: use "
                "ranking='local' and kept_per_prompt=1.",
            )
            require(
                self.num_generations >= 2,
                f"loss_type='reinforce_rej' with num_generations={self.num_generations}: a prompt needs at least two "
                "candidates to have rewards that differ; set num_generations >= 2 (the paper: 4 or more).",
            )
            require(
                self.beta == 0,
                f"loss_type='reinforce_rej' with beta={self.beta}: Reinforce-Rej trains on every candidate of its "
                "prompts and ranks none, so the KL-penalised ranking score would go unused; set beta=0, or "
                "kl_loss_coef > 0 for a KL loss to the initial model.",
            )
        require(
            self.candidate_source in ("model", "dataset", "both"),
            f"candidate_source must be 'model', 'dataset' or 'both' (got {self.candidate_source!r}).",
        )
        require(
            self.sample_allocation == "uniform" or self.candidate_source == "model",
            f"sample_allocation={self.sample_allocation!r} shares out the model's samples, and "
            f"candidate_source={self.candidate_source!r} adds a dataset's: set candidate_source='model' or "
            "sample_allocation='uniform'.",
        )
        require(
            self.vllm_mode in ("colocate", "server"),
            f"vllm_mode must be 'colocate' or 'server' (got {self.vllm_mode!r}).",
        )
        require(
            0 < self.vllm_gpu_memory_utilization <= 1,
            f"vllm_gpu_memory_utilization must be in (0, 1] (got {self.vllm_gpu_memory_utilization}).",
        )
        require(
            self.vllm_tensor_parallel_size >= 1,
            f"vllm_tensor_parallel_size must be >= 1 (got {self.vllm_tensor_parallel_size}).",
        )
        self.model_init_kwargs = keyword_arguments(self.model_init_kwargs, "model_init_kwargs")
        super().__post_init__()

    @classmethod
    def from_grpo_config(cls, grpo_config, **overrides) -> "RAFTConfig":
        """The RAFT configuration of a TRL `GRPOConfig` (docs/grpo_config.md): every `TrainingArguments` field and
        every field of the same name and meaning carried over; GRPO's `beta` (a KL loss) as `kl_loss_coef`,
        `num_iterations` as `epochs_per_stage`, `delta` as `dual_clip`, `use_transformers_paged` as
        `use_transformers_continuous_batching`, the vLLM server's host and port as
        `vllm_server_base_url`; `disable_dropout` only when on (RAFTConfig's default already turns it on for the
        clipped losses). GRPO-only settings that would change training, set away from GRPO's defaults, are named in
        one warning. `overrides` are RAFTConfig fields set on top (`num_stages=8`, `loss_type="raft++"`)."""
        from trl import GRPOConfig

        if not isinstance(grpo_config, GRPOConfig):
            raise ValueError(f"from_grpo_config takes a trl GRPOConfig (got {type(grpo_config).__name__}).")
        grpo_fields = {f.name: f for f in dataclasses.fields(GRPOConfig) if f.init}
        values = {f.name: getattr(grpo_config, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
        values.pop("num_train_epochs")  # a run's length is num_stages
        own = set(grpo_fields) - set(values) - {"num_train_epochs"}
        ours = set(cls.__dataclass_fields__)
        for name in own & ours - GRPO_NOT_CARRIED - {"disable_dropout"}:
            values[name] = getattr(grpo_config, name)
        if grpo_config.disable_dropout:
            values["disable_dropout"] = True
        for name, raft_name in GRPO_EQUIVALENTS.items():
            if getattr(grpo_config, name) not in (None, False):  # a deprecated name set beside the new one
                values[raft_name] = getattr(grpo_config, name)
        if grpo_config.vllm_server_base_url is None and grpo_config.use_vllm and grpo_config.vllm_mode == "server":
            values["vllm_server_base_url"] = f"http://{grpo_config.vllm_server_host}:{grpo_config.vllm_server_port}"
        dropped = []
        for name in sorted(own - ours - set(GRPO_EQUIVALENTS) - GRPO_NOT_CARRIED):
            f = grpo_fields[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            resolved_at_init = default == "auto"  # e.g. pad_to_multiple_of, which GRPOConfig settles by device
            carried = name in ("vllm_server_host", "vllm_server_port")
            if not carried and not resolved_at_init and getattr(grpo_config, name) != default:
                dropped.append(f"{name}={getattr(grpo_config, name)!r}")
        if {**values, **overrides}.get("loss_type", "raft") == "raft":
            for name in ("top_entropy_quantile", "entropy_coef"):  # they shape the clipped losses only
                if values.get(name, cls.__dataclass_fields__[name].default) != cls.__dataclass_fields__[name].default:
                    dropped.append(
                        f"{values.pop(name)!r} for {name} (it shapes loss_type='raft++' and 'reinforce_rej')"
                    )
        if grpo_config.loss_type != "dapo":
            dropped.append(
                f"loss_type={grpo_config.loss_type!r} (RAFT's losses are token means over the step: 'dapo')"
            )
        if grpo_config.num_train_epochs != TrainingArguments.__dataclass_fields__["num_train_epochs"].default:
            dropped.append(f"num_train_epochs={grpo_config.num_train_epochs} (a run's length is num_stages)")
        if grpo_config.steps_per_generation != grpo_config.gradient_accumulation_steps:
            dropped.append(
                f"steps_per_generation={grpo_config.steps_per_generation} (a stage's steps: epochs_per_stage)"
            )
        if dropped:
            logging.getLogger(__name__).warning(
                "GRPOConfig settings RAFT does not have are left out (docs/grpo_config.md): %s.", ", ".join(dropped)
            )
        return cls(**{**values, **overrides})

    def selection_rule(self) -> SelectionRule:
        """The stage cycle's rule with what the language-model losses add: truncated completions rejected with
        `mask_truncated_completions`; distinct completions, where an ended and a truncated one of the same text
        differ (one ends with the end-of-sequence token); Reinforce-Rej keeps the groups with contrast."""
        return dataclasses.replace(
            super().selection_rule(),
            rejected_column="truncated" if self.mask_truncated_completions else None,
            distinct_columns=("completion", "truncated"),
            contrast_groups=self.loss_type == "reinforce_rej",
        )

    @property
    def continuous_batching(self) -> dict | None:
        """The `ContinuousBatchingConfig` keywords when candidates are sampled with continuous batching, else None."""
        if not self.use_transformers_continuous_batching:
            return None
        return dict(self.transformers_continuous_batching_config or {})

    @property
    def from_pretrained_kwargs(self) -> dict:
        """What `from_pretrained` takes for a model given by id: `model_init_kwargs` and `trust_remote_code`."""
        return {"trust_remote_code": self.trust_remote_code, **(self.model_init_kwargs or {})}

    @property
    def corrects_vllm_sampling(self) -> bool:
        """Whether the clipped losses weigh tokens by the importance ratio between the policy and vLLM's sampling."""
        return self.use_vllm and self.uses_policy_ratio and self.vllm_importance_sampling_correction

    @property
    def reads_sampling_log_probs(self) -> bool:
        """Whether a stage reads its samples' token log-probs and entropy under the sampling policy: for the clipped
        losses' ratio, or to log the entropy."""
        return self.uses_policy_ratio or self.log_entropy

    @property
    def dropout_disabled(self) -> bool:
        """Whether the policy's dropout is turned off: `disable_dropout`, or by default for the clipped losses."""
        return self.uses_policy_ratio if self.disable_dropout is None else self.disable_dropout

    @property
    def uses_policy_ratio(self) -> bool:
        """Whether the loss needs the sampling policy's log-probs (RAFT++ and Reinforce-Rej)."""
        return self.loss_type != "raft"


def as_raft_config(args) -> RAFTConfig | None:
    """`RAFTTrainer`'s `args`: a RAFTConfig, None, or a TRL GRPOConfig carried over (`RAFTConfig.from_grpo_config`)."""
    if args is None or isinstance(args, RAFTConfig):
        return args
    from trl import GRPOConfig

    if isinstance(args, GRPOConfig):
        return RAFTConfig.from_grpo_config(args)
    raise ValueError(
        f"args must be a RAFTConfig (got {type(args).__name__}): RAFTConfig(output_dir=..., ...) takes every "
        "TrainingArguments field too; a trl GRPOConfig is carried over (RAFTConfig.from_grpo_config)."
    )
