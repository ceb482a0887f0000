import pytest
import torch
from datasets import Dataset

from raft_trainer import RAFTConfig
from raft_trainer.toy.tiny import tiny_causal_lm, word_tokenizer

WORDS = "apple banana cherry dog egg fish grape house ice juice kite lemon".split()
PROMPT_WORDS = ["say", "something", "tell", "me", "a", "word", "please", "user", "Assistant", ":"]
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.fixture
def tokenizer():
    return word_tokenizer(WORDS + PROMPT_WORDS)


@pytest.fixture
def make_model(tokenizer):
    def make(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return tiny_causal_lm(tokenizer, **overrides)

    return make


@pytest.fixture
def prompts():
    return Dataset.from_dict(
        {
            "prompt": ["say something", "tell me a word", "say a word please", "tell me something"],
            "topic": list("abcd"),
        }
    )


@pytest.fixture
def make_args(tmp_path):
    def make(**overrides):
        fields = dict(
            output_dir=str(tmp_path / "out"),
            num_stages=1,
            prompts_per_stage=4,
            num_generations=4,
            max_completion_length=8,
            epochs_per_stage=1,
            per_device_train_batch_size=4,
            learning_rate=5e-3,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        fields.update(overrides)
        return RAFTConfig(**fields)

    return make


def share_of_apple(completions, **kwargs):
    """Share of the word 'apple' among a completion's words: a reward a tiny model can learn in seconds."""
    return [text.split().count("apple") / max(1, len(text.split())) for text in completions]
