"""The paper's pipeline on the miniature world, before RAFT: a tokenizer, the SFT start and the reward model.

As in the paper (section 4.1), the SFT start is the base model fine-tuned on the chosen responses, and the reward
model is trained on the preference pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected); both through
TRL's trainers. Results are cached: a second run with the same world and seed loads them.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from .tiny import tiny_causal_lm, word_tokenizer
from .world import ToyWorld

logger = logging.getLogger(__name__)

MODEL_SIZE = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)
CACHE_VERSION = "v1"  # bump when the models or their training change, to invalidate caches


@dataclass
class ToyModels:
    policy_path: str  # the SFT start (with its tokenizer)
    reward_model_path: str  # the reward model (with its tokenizer)


def prepare_models(world: ToyWorld, cache_dir: str, seed: int = 0, show_progress: bool = True) -> ToyModels:
    """Train (or load from `cache_dir`) the miniature world's SFT policy, then its reward model, which starts from
    the SFT policy's weights (as in InstructGPT) so that it knows which words belong to which topic."""
    world_hash = hashlib.sha256(json.dumps([world.pairs.to_dict(), world.eval_chosen.to_dict()]).encode()).hexdigest()
    directory = os.path.join(cache_dir, f"toy-{CACHE_VERSION}-seed{seed}-{world_hash[:12]}")
    models = ToyModels(os.path.join(directory, "sft"), os.path.join(directory, "reward"))
    steps = (
        (models.policy_path, lambda: _base_policy(world), train_sft_policy),
        (models.reward_model_path, lambda: _reward_model_from(models.policy_path), train_reward_model),
    )
    for path, make_model, train in steps:
        if os.path.exists(os.path.join(path, "config.json")):
            logger.info("Using the cached %s", path)
            continue
        torch.manual_seed(seed)
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            partial = os.path.join(scratch, "model")
            train(make_model(), world, partial, seed, show_progress)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)  # atomic: a crash never leaves a half-written model in the cache
    return models


def _base_policy(world: ToyWorld):
    tokenizer = word_tokenizer(world.corpus())
    return tiny_causal_lm(tokenizer, **MODEL_SIZE), tokenizer


def _reward_model_from(policy_path: str):
    model = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1)
    return model, AutoTokenizer.from_pretrained(policy_path)


def _common_args(output_dir: str, seed: int, show_progress: bool) -> dict:
    return dict(
        output_dir=output_dir,
        seed=seed,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=not show_progress,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # TRL's configs default to bf16
    )


def train_sft_policy(model_and_tokenizer, world: ToyWorld, output_dir: str, seed: int, show_progress: bool) -> None:
    """Supervised fine-tuning on the chosen responses (loss on the completions only)."""
    model, tokenizer = model_and_tokenizer
    args = SFTConfig(
        num_train_epochs=8,
        per_device_train_batch_size=32,
        learning_rate=6e-3,
        warmup_steps=20,
        lr_scheduler_type="cosine",
        max_length=MODEL_SIZE["n_positions"],
        **_common_args(output_dir, seed, show_progress),
    )
    trainer = SFTTrainer(model, args=args, train_dataset=world.sft, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()


def train_reward_model(model_and_tokenizer, world: ToyWorld, output_dir: str, seed: int, show_progress: bool) -> None:
    """A reward model trained on the (noisy) preference pairs with the pairwise loss."""
    model, tokenizer = model_and_tokenizer
    args = RewardConfig(
        num_train_epochs=6,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        max_length=MODEL_SIZE["n_positions"],
        **_common_args(output_dir, seed, show_progress),
    )
    trainer = RewardTrainer(model, args=args, train_dataset=world.pairs, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
