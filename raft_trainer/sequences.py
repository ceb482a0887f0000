"""Prompt + completion token sequences: the SFT example format, and their log-probs under a causal LM."""

import torch
from transformers import PreTrainedModel
from trl.trainer.utils import selective_log_softmax


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
