"""Language-model helpers: prompt tokenization, sampling settings, sampling, log-probs and the SFT example format."""

import contextlib
import copy
import inspect
import logging

import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, ContinuousBatchingConfig, GenerationConfig, PreTrainedModel
from trl.data_utils import is_conversational, maybe_apply_chat_template
from trl.trainer.utils import disable_dropout_in_model, pad, selective_log_softmax

from .losses import entropy_from_logits
from .memory import eval_mode
from .stages import Candidates

logger = logging.getLogger(__name__)


class TextCandidates(Candidates, total=False):
    """RAFTTrainer's candidates: the cycle's columns and these. The stage file takes `prompt_index`, `prompt`,
    `completion` and `completion_length` always, and the others as `RAFTTrainer.stage_file_columns` says."""

    prompt_ids: list[list[int]]  # generation: the prompt's token ids (the policy's)
    completion_ids: list[list[int]]  # generation: the completion's token ids, ending with eos unless truncated
    completion: list[str]  # generation: the decoded completion (a sample filter may replace it)
    truncated: list[bool]  # generation: cut off at max_completion_length (a dataset completion never is)
    source: list[str]  # with a candidate dataset only: "model" or "dataset"
    old_log_probs: list[list[float]]  # RAFT++ / Reinforce-Rej: per completion token, under the sampling policy
    entropy: list[float]  # with old_log_probs or log_entropy: the sampling distribution's mean token entropy
    log_prob: list[float]  # beta > 0: log p(completion | prompt) under the policy
    ref_log_prob: list[float]  # beta > 0: the same under the reference model
    score: list[float | None]  # beta > 0: the KL-penalised score candidates are ranked by


def load_tokenizer(name_or_path: str, tokenizer=None, trust_remote_code: bool = False):
    """`tokenizer`, or the one at `name_or_path` when none is given; one without a pad token gets its eos token as
    pad token, since batches are padded."""
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def disable_dropout(model: PreTrainedModel) -> None:
    """Turn off every dropout of `model`: TRL's `disable_dropout_in_model` for the `nn.Dropout` modules, and the
    attention dropout rate that Llama-style attention keeps as a plain number."""
    disable_dropout_in_model(model)
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")  # what a forward pass of the policy takes


def cast_lm_head_to_fp32(model: PreTrainedModel) -> None:
    """Compute `model`'s logits in float32 whatever its own dtype and the autocast (the ScaleRL recipe): the head's
    weights become float32 and its forward runs outside autocast on float32 hidden states. Refused for a head tied to
    the input embeddings (they would be cast too) or adapted by PEFT."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if getattr(base.config, "tie_word_embeddings", False):
        raise ValueError(
            "cast_lm_head_to_fp32=True needs an lm_head not tied to the input embeddings (tie_word_embeddings=False "
            "in the model's config): casting a tied head casts the embeddings too. Set cast_lm_head_to_fp32=False."
        )
    if hasattr(head, "base_layer"):
        raise ValueError(
            "cast_lm_head_to_fp32=True with a PEFT adapter on the lm_head: drop lm_head from the adapter's "
            "target_modules, or set cast_lm_head_to_fp32=False."
        )
    head.float()

    def forward_in_fp32(hidden_states: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden_states.device.type, enabled=False):
            return F.linear(hidden_states.float(), head.weight, head.bias)

    head.forward = forward_in_fp32


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float, accelerator=None) -> torch.Tensor:
    """The mask of completion tokens whose entropy is in the top `quantile` of every process's completion tokens of
    the batch (TRL's `top_entropy_quantile`; the twin of `reference.high_entropy_mask`): at least the
    (1 - quantile) quantile of them."""
    values = entropy[mask.bool()].float()
    if accelerator is not None and accelerator.num_processes > 1:  # -1 pads: no entropy is negative
        values = accelerator.gather(accelerator.pad_across_processes(values, dim=0, pad_index=-1.0))
        values = values[values >= 0]
    if values.numel() == 0:
        return mask.bool()
    threshold = torch.quantile(values, 1 - quantile)
    return mask.bool() & (entropy >= threshold)


def sft_example(prompt_ids: list[int], completion_ids: list[int]) -> dict[str, list[int]]:
    """Prompt + completion tokens, with the prompt masked out of the labels: the loss is on the completion only."""
    return {"input_ids": prompt_ids + completion_ids, "labels": [-100] * len(prompt_ids) + completion_ids}


def sampling_logits(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0, repetition_penalty: float = 1.0
) -> torch.Tensor:
    """The logits of the distribution candidates are sampled from, at every position at once: `logits` [B, T, V],
    position t predicting `input_ids[:, t + 1]`. First transformers' repetition penalty (a token already in
    `input_ids[:, : t + 1]` has its logit divided by the penalty where positive, multiplied where negative), then the
    temperature: the order `generate` applies them in. Truncations (`top_k`, `top_p`, `min_p`) are left out, as in
    TRL: they decide which tokens may be drawn, not the log-probs of those drawn."""
    if repetition_penalty != 1.0:
        batch, length, vocabulary = logits.shape
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        first_seen = torch.full((batch, vocabulary), input_ids.shape[1], device=input_ids.device)
        first_seen = first_seen.scatter_reduce(1, input_ids, positions, reduce="amin")  # each token's first place
        seen = first_seen[:, None, :] <= torch.arange(length, device=input_ids.device)[None, :, None]
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    return logits / temperature if temperature != 1.0 else logits


def completion_token_log_probs(
    model: PreTrainedModel,
    batch: dict,
    temperature: float = 1.0,
    with_entropy: bool = False,
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """Per-token log-probs of a collated batch's labels under `model` (under `sampling_logits`: at `temperature`
    and `repetition_penalty`, as when sampling with them), the mask of completion tokens, and with `with_entropy`
    each position's entropy too.

    `batch` holds `input_ids`, `attention_mask` and `labels` (-100 outside completions), as the SFT collator makes
    them. Position t predicts token t + 1, so logits and labels are shifted against each other, as in the model's
    own loss.
    """
    batch = {name: tensor.to(model.device) for name, tensor in batch.items() if name in SEQUENCE_KEYS}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logits = sampling_logits(logits, batch["input_ids"], temperature, repetition_penalty)
    labels = batch["labels"][:, 1:]
    log_probs, mask = selective_log_softmax(logits, labels.clamp(min=0)), labels != -100
    return (log_probs, mask, entropy_from_logits(logits)) if with_entropy else (log_probs, mask)


@torch.no_grad()
def per_token_log_probs(
    model: PreTrainedModel,
    examples: list[dict],
    collator,
    batch_size: int,
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
) -> tuple[list[list[float]], list[float]]:
    """Each SFT example's completion-token log-probs under `model` at `temperature` and `repetition_penalty`, and
    its mean token entropy: one batched forward pass in eval mode, no gradient."""
    log_probs, entropies = [], []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = collator(examples[start : start + batch_size])
            token_log_probs, mask, entropy = completion_token_log_probs(
                model, batch, temperature, with_entropy=True, repetition_penalty=repetition_penalty
            )
            for row, row_mask, row_entropy in zip(token_log_probs.float().cpu(), mask.cpu(), entropy.float().cpu()):
                log_probs.append(row[row_mask].tolist())
                entropies.append(row_entropy[row_mask].mean().item() if row_mask.any() else 0.0)
    return log_probs, entropies


@torch.no_grad()
def output_layer_gradient_norms(
    model: PreTrainedModel, examples: list[dict], collator, batch_size: int
) -> list[float]:
    """Each SFT example's gradient norm of its completion's negative log-likelihood with respect to the output
    layer's weight W (logits = W h): the norm of sum_t a_t h_t^T with a_t = softmax(W h_t) - e_{y_t}, whose square is
    sum_{t,s} (a_t . a_s)(h_t . h_s). One forward in eval mode and no backward: GVM-RAFT's gradient norm, measured on
    the output layer (`reference.output_layer_gradient_norm` builds the matrix itself)."""
    captured = {}
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, inputs, output: captured.update(hidden=inputs[0]))
    norms = []
    try:
        with eval_mode(model):
            for start in range(0, len(examples), batch_size):
                batch = collator(examples[start : start + batch_size])
                batch = {name: tensor.to(model.device) for name, tensor in batch.items() if name in SEQUENCE_KEYS}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                labels = batch["labels"][:, 1:]
                mask = (labels != -100).unsqueeze(-1).float()
                errors = torch.softmax(logits[:, :-1].float(), dim=-1)
                errors.scatter_add_(-1, labels.clamp(min=0).unsqueeze(-1), -torch.ones_like(mask))
                errors, hidden = errors * mask, captured["hidden"][:, :-1].float() * mask
                squared = (errors @ errors.transpose(1, 2)) * (hidden @ hidden.transpose(1, 2))
                norms += squared.sum(dim=(1, 2)).clamp(min=0).sqrt().tolist()
    finally:
        hook.remove()
    return norms


def left_padded(completion_values: list[float], length: int) -> list[float]:
    """Per-completion-token values placed under the completion of a sequence of `length` tokens (0 before it)."""
    if len(completion_values) > length:
        raise ValueError(f"{len(completion_values)} completion-token values for a sequence of {length} tokens.")
    return [0.0] * (length - len(completion_values)) + completion_values


# What the clipped and KL losses read besides the sequences: per token, and one advantage per sequence.
PER_TOKEN_LOSS_KEYS = ("old_log_probs", "ref_log_probs", "importance_weights")
POLICY_LOSS_KEYS = (*PER_TOKEN_LOSS_KEYS, "advantages")


class PolicyLossCollator:
    """The SFT collator's batch (`input_ids`, `attention_mask`, `labels`) plus what the clipped and KL losses need
    (`POLICY_LOSS_KEYS`): the per-token values padded like the labels (0 outside completions) and one `advantages`
    per example, when the examples carry them."""

    def __init__(self, sft_collator):
        self.sft_collator = sft_collator

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.sft_collator(examples)
        length = batch["input_ids"].shape[1]
        for name in PER_TOKEN_LOSS_KEYS:
            if name in examples[0]:
                rows = [torch.tensor(example[name], dtype=torch.float32) for example in examples]
                batch[name] = torch.stack([F.pad(row, (0, length - len(row))) for row in rows])
        if "advantages" in examples[0]:
            batch["advantages"] = torch.tensor([example["advantages"] for example in examples], dtype=torch.float32)
        return batch


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    generation_config: GenerationConfig,
    num_return_sequences: int,
    batch_size: int,
    show_progress: bool = True,
    continuous_batching: dict | None = None,
) -> list[list[int]]:
    """Sample `num_return_sequences` completions per prompt, prompt-major, each cut after its first eos token.

    Prompts are left-padded and batched so that a batch holds about `batch_size` sequences. Each prompt is encoded
    once, not once per sample (`prompt_cache`). The model is put in eval mode for generation and restored
    afterwards. With `continuous_batching` (a dict of `ContinuousBatchingConfig` fields, {} for its defaults) the
    samples come from transformers' continuous batching with paged attention instead (`generate_continuously`).
    """
    if continuous_batching is not None:
        return generate_continuously(
            model, prompt_ids, generation_config, num_return_sequences, continuous_batching, show_progress
        )
    generation_config = copy.copy(generation_config)
    eos_token_ids = torch.tensor(generation_config.eos_token_id, device=model.device).view(-1)
    prompts_per_batch = max(1, batch_size // num_return_sequences)
    with eval_mode(model), only_given_settings(model):
        completions = []
        for start in tqdm(
            range(0, len(prompt_ids), prompts_per_batch), desc="Generating", disable=not show_progress, leave=False
        ):
            batch = [torch.tensor(ids) for ids in prompt_ids[start : start + prompts_per_batch]]
            input_ids = pad(batch, padding_value=generation_config.pad_token_id, padding_side="left").to(model.device)
            attention_mask = pad([torch.ones_like(ids) for ids in batch], padding_side="left").to(model.device)
            cache = prompt_cache(model, input_ids, attention_mask, num_return_sequences, generation_config)
            if cache:
                # Each prompt already sits in the cache once per sample: generate continues every row as it is.
                input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
                attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
                generation_config.num_return_sequences = 1
            else:
                generation_config.num_return_sequences = num_return_sequences
            sequences = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **cache
            )
            completions.extend(strip_after_eos(sequences[:, input_ids.shape[1] :], eos_token_ids))
    return completions


@torch.no_grad()
def generate_continuously(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    generation_config: GenerationConfig,
    num_return_sequences: int,
    continuous_batching: dict,
    show_progress: bool = True,
) -> list[list[int]]:
    """`generate_completions` through transformers' continuous batching (`generate_batch`, what GRPOConfig's
    `use_transformers_paged` turns on): requests join and leave the running batch as they finish, over a paged
    key-value cache, so no row waits for the longest completion and no prompt is padded.

    `generate_batch` returns each prompt's samples together (its forked children, then the prompt's own request) in
    the order of the prompts; it logs a failed request instead of raising, so a missing one is raised here.
    """
    generation_config = copy.copy(generation_config)
    generation_config.num_return_sequences = num_return_sequences
    settings = dict(continuous_batching)
    if model.device.type == "cpu" and not {"num_blocks", "max_memory_percent"} & settings.keys():
        # On a CPU transformers sizes the paged cache at 60% of the machine's memory (13.6 GB for a 135M model on a
        # 24 GB machine, which the kernel killed): size it for this call's requests instead.
        longest = max(map(len, prompt_ids)) + generation_config.max_new_tokens
        pages = -(-longest // settings.get("page_size", ContinuousBatchingConfig.page_size))
        settings["num_blocks"] = len(prompt_ids) * num_return_sequences * pages
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    with eval_mode(model), only_given_settings(model):
        outputs = hf_model.generate_batch(
            inputs=prompt_ids,
            generation_config=generation_config,
            continuous_batching_config=ContinuousBatchingConfig(**settings),
            progress_bar=show_progress,
            # Warm-up captures CUDA graphs; on a CPU it only costs time.
            warmup=model.device.type == "cuda",
        )
    completions = [output.generated_tokens for output in outputs.values() if output.error is None]
    if len(completions) != len(prompt_ids) * num_return_sequences:
        raise RuntimeError(
            f"Continuous batching returned {len(completions)} of {len(prompt_ids) * num_return_sequences} "
            "completions (its log names the failed requests); set use_transformers_continuous_batching=False to "
            "sample with generate."
        )
    eos_token_ids = set(torch.tensor(generation_config.eos_token_id).view(-1).tolist())
    return [
        ids[: next((i + 1 for i, token in enumerate(ids) if token in eos_token_ids), len(ids))] for ids in completions
    ]


# What `generate` may still take from a model's own generation_config: how the key-value cache is kept, which
# changes the speed and not the samples. Everything else comes from the config `generate_completions` is given.
CACHE_SETTINGS = ("cache_implementation", "cache_config", "compile_config")


@contextlib.contextmanager
def only_given_settings(model: PreTrainedModel):
    """Within the block, `generate` samples with the settings it is given and none of the model's own.

    `generate` fills every field its config leaves unset from the model's generation_config, and checkpoints ship
    sampling settings there (Qwen2.5-Instruct `repetition_penalty=1.05`, others `no_repeat_ngram_size`, `min_p`).
    The samples would then come from a processed distribution while the policy-ratio losses and the evaluations take
    them to be softmax(logits / temperature); so the model's config is swapped for one holding its cache settings
    only, and put back afterwards.
    """
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model  # where a peft model generates
    own = hf_model.generation_config
    kept = {name: getattr(own, name) for name in CACHE_SETTINGS if getattr(own, name, None) is not None}
    hf_model.generation_config = GenerationConfig(**kept)
    try:
        yield
    finally:
        hf_model.generation_config = own


def prompt_cache(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_return_sequences: int,
    generation_config: GenerationConfig,
) -> dict:
    """The key-value cache of a left-padded batch of prompts but their last token, computed once per prompt and
    repeated for each of its samples, as the keyword `generate` takes it; {} where it does not apply.

    `generate` copies each prompt num_return_sequences times before its first forward pass, so a prompt is encoded
    once per sample: with 8 samples of 16 tokens from prompts of about 45 tokens, that encoding was most of the
    sampling time on a CPU. The last token is left out because `generate` needs one to predict the first new token
    from; the positions are those `generate` derives from the attention mask, so the samples are the same.
    """
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's forward
    # A cache `generate` makes itself (a static one, say, named in the model's own generation_config too) cannot be
    # handed a prefilled one.
    cache_implementation = generation_config.cache_implementation or base_model.generation_config.cache_implementation
    if num_return_sequences == 1 or input_ids.shape[1] < 2 or cache_implementation is not None:
        return {}
    parameters = inspect.signature(base_model.forward).parameters
    # transformers 5 names the cache `cache`; earlier versions `past_key_values`.
    keyword = next((name for name in ("cache", "past_key_values") if name in parameters), None)
    if keyword is None or generation_config.use_cache is False:
        return {}
    inputs = {"input_ids": input_ids[:, :-1], "attention_mask": attention_mask[:, :-1], "use_cache": True}
    if "position_ids" in parameters:
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        inputs["position_ids"] = position_ids[:, :-1]
    if "logits_to_keep" in parameters:  # the logits of the prompt are not needed
        inputs["logits_to_keep"] = 1
    outputs = model(**inputs)
    cache = outputs.get(keyword)
    if not hasattr(cache, "batch_repeat_interleave"):  # a model whose forward returns no `Cache` object
        return {}
    cache.batch_repeat_interleave(num_return_sequences)
    return {keyword: cache}


def strip_after_eos(completions: torch.Tensor, eos_token_ids: torch.Tensor) -> list[list[int]]:
    """Each completion's tokens up to and including its first eos token (what follows is padding)."""
    is_eos = torch.isin(completions, eos_token_ids)
    lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completions.shape[1])
    return [row[:length].tolist() for row, length in zip(completions, lengths.tolist())]


def tokenize_prompts(
    dataset: Dataset, tokenizer, max_prompt_length: int | None, chat_template_kwargs: dict | None = None
) -> tuple[Dataset, list[list[int]]]:
    """Token ids of every prompt, and the dataset without the prompts longer than `max_prompt_length` tokens.

    Chat prompts are rendered with the tokenizer's chat template (with the generation prompt and
    `chat_template_kwargs`), whose text already holds the special tokens; plain-text prompts get the tokenizer's
    usual special tokens.
    """
    prompts = list(dataset["prompt"])
    if is_conversational({"prompt": prompts[0]}):
        template_kwargs = chat_template_kwargs or {}
        texts = [
            maybe_apply_chat_template({"prompt": prompt}, tokenizer, **template_kwargs)["prompt"] for prompt in prompts
        ]
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompts)["input_ids"]
    if max_prompt_length is None:
        return dataset, prompt_ids
    short = [i for i, ids in enumerate(prompt_ids) if len(ids) <= max_prompt_length]
    if len(short) < len(prompt_ids):
        logger.warning(
            "Dropped %d of %d prompts longer than max_prompt_length=%d tokens.",
            len(prompt_ids) - len(short),
            len(prompt_ids),
            max_prompt_length,
        )
    if not short:
        raise ValueError(
            f"every prompt of train_dataset is longer than max_prompt_length={max_prompt_length} tokens: raise "
            "max_prompt_length or set it to None."
        )
    return dataset.select(short), [prompt_ids[i] for i in short]


def completion_reward_inputs(candidates: dict[str, list]) -> dict:
    """The completion keywords of TRL's reward-function convention: `completions=` (text, or one assistant message
    for chat prompts) and `completion_ids=`."""
    completions = candidates["completion"]
    if is_conversational({"prompt": candidates["prompt"][0]}):
        completions = [[{"role": "assistant", "content": text}] for text in completions]
    return {"completions": completions, "completion_ids": candidates["completion_ids"]}


def sampling_config(
    tokenizer,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    bos_token_id: int | None = None,
    **settings,
) -> GenerationConfig:
    """Sampling up to `max_new_tokens`, ending at `eos_token_id` (default: the tokenizer's eos token); `settings`
    are further `GenerationConfig` fields (`min_p`, `repetition_penalty`, ...)."""
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_token_id if isinstance(eos_token_id, list) else [eos_token_id],
        bos_token_id=tokenizer.bos_token_id if bos_token_id is None else bos_token_id,
        **settings,
    )


def truncated_flags(completion_ids: list[list[int]], eos_token_ids: list[int]) -> list[bool]:
    """A completion is cut at its first eos token; one without any ran into `max_completion_length`."""
    return [not ids or ids[-1] not in eos_token_ids for ids in completion_ids]


def candidate_generation_config(model: PreTrainedModel, tokenizer, args) -> GenerationConfig:
    """How candidates are sampled: the config's sampling settings (`generation_kwargs` among them), and the model's
    eos token(s) (the tokenizer's if the model names none)."""
    return sampling_config(
        tokenizer,
        args.max_completion_length,
        args.temperature,
        args.top_k,
        args.top_p,
        model.generation_config.eos_token_id,
        model.generation_config.bos_token_id,
        **(args.generation_kwargs or {}),
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        cache_implementation=args.cache_implementation,
    )
