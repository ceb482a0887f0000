import math

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from raft_trainer.metrics import distinct_n, msttr, perplexity, text_metrics, unique_n
from raft_trainer.sequences import sft_example

from .helpers import NO_DROPOUT


def test_distinct_n_on_hand_counted_texts():
    texts = ["a b a", "A b c"]
    # unigrams: a b a a b c -> 3 distinct of 6; bigrams: (a b) (b a) (a b) (b c) -> 3 distinct of 4
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)


def test_distinct_n_without_ngrams_is_zero():
    assert distinct_n(["a", ""], 2) == 0.0


def test_unique_n_counts_ngrams_seen_exactly_once():
    texts = ["a b a", "a b c"]
    assert unique_n(texts, 1) == 1  # only "c"
    assert unique_n(texts, 2) == 2  # (b a) and (b c); (a b) occurs twice


def test_msttr_averages_full_segments_only():
    # 4 full segments of 3 words + a partial one that is ignored: TTRs 1, 1/3, 2/3, 1 -> mean 3/4
    texts = ["a b c", "d d d", "e f e", "g h i j"]
    assert msttr(texts, window=3) == pytest.approx((1 + 1 / 3 + 2 / 3 + 1) / 4)
    assert msttr(["a a b"], window=100) == pytest.approx(2 / 3)
    assert msttr([], window=100) == 0.0


def test_text_metrics_has_the_table_3_columns():
    assert set(text_metrics(["a b"])) == {"msttr_100", "distinct_1", "distinct_2", "unique_1", "unique_2"}


def test_perplexity_is_exp_of_the_mean_completion_nll(make_model, tokenizer):
    model = make_model(**NO_DROPOUT).eval()
    pairs = [([3, 4, 5], [6, 7]), ([8], [9, 10, 11, 1])]
    nll, tokens = 0.0, 0
    for prompt_ids, completion_ids in pairs:  # one unpadded sequence at a time, by hand
        ids = torch.tensor([prompt_ids + completion_ids])
        log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
        for position in range(len(prompt_ids) - 1, ids.shape[1] - 1):
            nll -= log_probs[position, ids[0, position + 1]].item()
            tokens += 1
    examples = [sft_example(p, c) for p, c in pairs]
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    assert perplexity(model, examples, collator, batch_size=2) == pytest.approx(math.exp(nll / tokens), rel=1e-5)
