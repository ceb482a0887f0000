"""Evaluation metrics: the columns of the paper's Table 3 (GEM-metrics definitions).

Text metrics work on words: each text lower-cased and split on whitespace.
"""

import math
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from .memory import eval_mode
from .sequences import completion_token_log_probs


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_counts(texts: Sequence[str], n: int) -> Counter:
    return Counter(gram for text in texts for gram in ngrams(words(text), n))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: distinct n-grams over all n-grams of the set of texts (0 when there is no n-gram)."""
    counts = ngram_counts(texts, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def unique_n(texts: Sequence[str], n: int) -> int:
    """Unique-n: how many n-grams occur exactly once in the whole set of texts."""
    return sum(1 for count in ngram_counts(texts, n).values() if count == 1)


def msttr(texts: Sequence[str], window: int = 100) -> float:
    """Mean segmental type-token ratio: the texts' words, concatenated, cut into segments of `window` words; the
    mean over full segments of distinct words / `window`. With fewer than `window` words, the ratio of all of them."""
    tokens = [word for text in texts for word in words(text)]
    if not tokens:
        return 0.0
    segments = [tokens[i : i + window] for i in range(0, len(tokens) - window + 1, window)] or [tokens]
    return sum(len(set(segment)) / len(segment) for segment in segments) / len(segments)


def text_metrics(texts: Sequence[str]) -> dict[str, float]:
    """The diversity columns of the paper's Table 3 for a set of generated texts."""
    return {
        "msttr_100": msttr(texts, 100),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "unique_1": unique_n(texts, 1),
        "unique_2": unique_n(texts, 2),
    }


@torch.no_grad()
def perplexity(model: PreTrainedModel, examples: list[dict], collator: Callable, batch_size: int = 32) -> float:
    """exp(total NLL / total tokens) of the completions of SFT `examples` (`sequences.sft_example`) under `model`."""
    with eval_mode(model):
        total_nll, total_tokens = 0.0, 0
        for start in range(0, len(examples), batch_size):
            token_log_probs, mask = completion_token_log_probs(model, collator(examples[start : start + batch_size]))
            total_nll -= (token_log_probs * mask).sum().item()
            total_tokens += int(mask.sum())
    return math.exp(total_nll / total_tokens)
