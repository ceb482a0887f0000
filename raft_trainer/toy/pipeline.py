"""The paper's pipeline on the miniature world, before RAFT: a tokenizer, the SFT start and the reward model.

As in the paper (section 4.1), the SFT start is the base model fine-tuned on the chosen responses, and the reward
model is trained on the preference pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected); both through
TRL's trainers. Results are cached: a second run with the same world and seed loads them.
"""

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from .tiny import tiny_causal_lm, tiny_reward_model, word_tokenizer
from .world import ToyWorld

logger = logging.getLogger(__name__)

MODEL_SIZE = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)
CACHE_VERSION = "v1"  # bump when the world, the models or their training change, to invalidate caches


@dataclass
class ToyModels:
    policy_path: str  # the SFT start (with its tokenizer)
    reward_model_path: str  # the reward model (with its tokenizer)


def prepare_models(world: ToyWorld, cache_dir: str, seed: int = 0, show_progress: bool = True) -> ToyModels:
    """Train (or load from `cache_dir`) the miniature world's SFT policy and reward model."""
    directory = os.path.join(cache_dir, f"toy-{CACHE_VERSION}-seed{seed}")
    models = ToyModels(os.path.join(directory, "sft"), os.path.join(directory, "reward"))
    tokenizer = None
    for path, train in ((models.policy_path, train_sft_policy), (models.reward_model_path, train_reward_model)):
        if os.path.exists(os.path.join(path, "config.json")):
            logger.info("Using the cached %s", path)
            continue
        tokenizer = tokenizer or word_tokenizer(world.corpus())
        torch.manual_seed(seed)
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            partial = os.path.join(scratch, "model")
            train(world, tokenizer, partial, seed, show_progress)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)  # atomic: a crash never leaves a half-written model in the cache
    return models


def _common_args(output_dir: str, seed: int, show_progress: bool) -> dict:
    return dict(
        output_dir=output_dir,
        seed=seed,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=not show_progress,
        use_cpu=not torch.cuda.is_available(),
    )


def train_sft_policy(world: ToyWorld, tokenizer, output_dir: str, seed: int, show_progress: bool) -> None:
    """Supervised fine-tuning of a tiny GPT-2 on the chosen responses (loss on the completions only)."""
    args = SFTConfig(
        num_train_epochs=4,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        max_length=MODEL_SIZE["n_positions"],
        **_common_args(output_dir, seed, show_progress),
    )
    trainer = SFTTrainer(
        tiny_causal_lm(tokenizer, **MODEL_SIZE), args=args, train_dataset=world.sft, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model()


def train_reward_model(world: ToyWorld, tokenizer, output_dir: str, seed: int, show_progress: bool) -> None:
    """A tiny GPT-2 reward model trained on the (noisy) preference pairs with the pairwise loss."""
    args = RewardConfig(
        num_train_epochs=3,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        max_length=MODEL_SIZE["n_positions"],
        **_common_args(output_dir, seed, show_progress),
    )
    trainer = RewardTrainer(
        tiny_reward_model(tokenizer, **MODEL_SIZE), args=args, train_dataset=world.pairs, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model()
