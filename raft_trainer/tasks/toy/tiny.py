"""Tiny language models built from configs, for offline tests and the miniature world: nothing is downloaded.
(The tiny Stable Diffusion and OpenCLIP models are in `raft_trainer/diffusion/tiny.py`.)"""

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]


def word_tokenizer(texts: list[str], padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `texts` (split on whitespace and punctuation), with pad, eos and unk."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side=padding_side
    )


def gpt2_config(tokenizer, **overrides) -> GPT2Config:
    """A tiny GPT-2 configuration for `tokenizer`; `overrides` replace any field (e.g. `n_embd`, `resid_pdrop`)."""
    fields = dict(n_positions=64, n_embd=32, n_layer=2, n_head=2)
    fields.update(overrides)
    return GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )


def tiny_causal_lm(tokenizer, **config_overrides) -> GPT2LMHeadModel:
    """A randomly initialised tiny GPT-2 for `tokenizer`."""
    model = GPT2LMHeadModel(gpt2_config(tokenizer, **config_overrides))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_reward_model(tokenizer, **config_overrides) -> GPT2ForSequenceClassification:
    """A randomly initialised tiny GPT-2 reward model (one score per sequence) for `tokenizer`."""
    config = gpt2_config(tokenizer, num_labels=1, **config_overrides)
    return GPT2ForSequenceClassification(config)
