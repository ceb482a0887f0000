import pytest
import torch
from datasets import Dataset

from raft_trainer import RAFTConfig
from raft_trainer.toy.tiny import tiny_causal_lm, word_tokenizer

WORDS = "apple banana cherry dog egg fish grape house ice juice kite lemon".split()
PROMPT_WORDS = ["say", "something", "tell", "me", "a", "word", "please", "user", "Assistant", ":"]
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}Assistant : {% endif %}"
)
# Settings under which a random tiny model learns `share_of_apple` within a few stages.
LEARNING_PROMPTS = ["say something", "tell me a word", "say a word please", "tell me"] * 4
LEARNING_RUN = dict(
    num_stages=4,
    prompts_per_stage=16,
    num_generations=8,
    max_completion_length=16,
    epochs_per_stage=4,
    per_device_train_batch_size=8,
    learning_rate=1e-2,
)


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
def local_files(tmp_path, tokenizer, make_model):
    """A tiny policy, a tiny reward model (each with the tokenizer) and a prompt dataset folder, on disk; returns
    their paths and the dataset folder's `train.jsonl` prompts."""
    from raft_trainer.toy.tiny import tiny_reward_model

    make_model().save_pretrained(tmp_path / "policy")
    tiny_reward_model(tokenizer).save_pretrained(tmp_path / "reward")
    for path in ("policy", "reward"):
        tokenizer.save_pretrained(tmp_path / path)
    data = tmp_path / "data"
    data.mkdir()
    prompts = ["say something", "tell me a word", "say a word please", "tell me something"]
    return str(tmp_path / "policy"), str(tmp_path / "reward"), data, prompts


def config_maker(tmp_path, config_class, **defaults):
    """A factory of quiet one-stage test configurations of `config_class` writing to `tmp_path/out`: `defaults`,
    then the keywords each call gives, override the common settings."""
    common = dict(
        output_dir=str(tmp_path / "out"),
        num_stages=1,
        prompts_per_stage=4,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )

    def make(**overrides):
        return config_class(**{**common, **defaults, **overrides})

    return make


@pytest.fixture
def make_args(tmp_path):
    return config_maker(
        tmp_path,
        RAFTConfig,
        num_generations=4,
        max_completion_length=8,
        epochs_per_stage=1,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
    )


def share_of_apple(completions, **kwargs):
    """Share of the word 'apple' among a completion's words: a reward a tiny model can learn in seconds."""
    return [text.split().count("apple") / max(1, len(text.split())) for text in completions]
