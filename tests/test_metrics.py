import pytest

from raft_trainer.metrics import distinct_n


def test_distinct_n_on_hand_counted_texts():
    texts = ["a b a", "a b c"]
    # unigrams: a b a a b c -> 3 distinct of 6; bigrams: (a b) (b a) (a b) (b c) -> 3 distinct of 4
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)


def test_distinct_n_without_ngrams_is_zero():
    assert distinct_n(["a", ""], 2) == 0.0
