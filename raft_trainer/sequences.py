"""Prompt + completion token sequences: the SFT example format, and their log-probs under a causal LM."""

import copy

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel
from trl.trainer.utils import pad, selective_log_softmax


def load_tokenizer(name_or_path: str, tokenizer=None):
    """`tokenizer`, or the one at `name_or_path` when none is given; one without a pad token gets its eos token as
    pad token, since batches are padded."""
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def sft_example(prompt_ids: list[int], completion_ids: list[int]) -> dict[str, list[int]]:
    """Prompt + completion tokens, with the prompt masked out of the labels: the loss is on the completion only."""
    return {"input_ids": prompt_ids + completion_ids, "labels": [-100] * len(prompt_ids) + completion_ids}


def completion_token_log_probs(model: PreTrainedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of a collated batch's labels under `model`, and the mask of completion tokens.

    `batch` holds `input_ids`, `attention_mask` and `labels` (-100 outside completions), as the SFT collator makes
    them. Position t predicts token t + 1, so logits and labels are shifted against each other, as in the model's
    own loss.
    """
    batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return selective_log_softmax(logits, labels.clamp(min=0)), labels != -100


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    generation_config: GenerationConfig,
    num_return_sequences: int,
    batch_size: int,
    show_progress: bool = True,
) -> list[list[int]]:
    """Sample `num_return_sequences` completions per prompt, prompt-major, each cut after its first eos token.

    Prompts are left-padded and batched so that a batch holds about `batch_size` sequences; each prompt is encoded
    once per batch. The model is put in eval mode for generation and restored afterwards.
    """
    generation_config = copy.copy(generation_config)
    generation_config.num_return_sequences = num_return_sequences
    eos_token_ids = torch.tensor(generation_config.eos_token_id, device=model.device).view(-1)
    prompts_per_batch = max(1, batch_size // num_return_sequences)
    was_training = model.training
    model.eval()
    completions = []
    for start in tqdm(
        range(0, len(prompt_ids), prompts_per_batch), desc="Generating", disable=not show_progress, leave=False
    ):
        batch = [torch.tensor(ids) for ids in prompt_ids[start : start + prompts_per_batch]]
        input_ids = pad(batch, padding_value=generation_config.pad_token_id, padding_side="left").to(model.device)
        attention_mask = pad([torch.ones_like(ids) for ids in batch], padding_side="left").to(model.device)
        sequences = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=generation_config,
        )
        completions.extend(strip_after_eos(sequences[:, input_ids.shape[1] :], eos_token_ids))
    model.train(was_training)
    return completions


def strip_after_eos(completions: torch.Tensor, eos_token_ids: torch.Tensor) -> list[list[int]]:
    """Each completion's tokens up to and including its first eos token (what follows is padding)."""
    is_eos = torch.isin(completions, eos_token_ids)
    lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completions.shape[1])
    return [row[:length].tolist() for row, length in zip(completions, lengths.tolist())]
