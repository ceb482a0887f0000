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

from ...reporting.console import quiet_callbacks
from .tiny import tiny_causal_lm, word_tokenizer
from .world import ToyWorld

logger = logging.getLogger(__name__)

MODEL_SIZE = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)
CACHE_VERSION = "v1"  # bump when the models or their training change, to invalidate caches
# SFT on the chosen responses (the loss on completions only), and the reward model on the pairs (pairwise loss).
SFT_TRAINING = dict(num_train_epochs=8, learning_rate=6e-3, warmup_steps=20)
REWARD_TRAINING = dict(num_train_epochs=6, learning_rate=2e-3)


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
    phases = (
        (models.policy_path, lambda: _base_policy(world), SFTTrainer, SFTConfig, SFT_TRAINING, world.sft),
        (
            models.reward_model_path,
            lambda: _reward_model_from(models.policy_path),
            RewardTrainer,
            RewardConfig,
            REWARD_TRAINING,
            world.pairs,
        ),
    )
    for path, make_model, trainer_class, config_class, hyperparameters, dataset in phases:
        if os.path.exists(os.path.join(path, "config.json")):
            logger.info("Using the cached %s", path)
            continue
        torch.manual_seed(seed)
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            partial = os.path.join(scratch, "model")
            model, tokenizer = make_model()
            args = config_class(
                output_dir=partial,
                seed=seed,
                per_device_train_batch_size=32,
                lr_scheduler_type="cosine",
                max_length=MODEL_SIZE["n_positions"],
                report_to="none",
                save_strategy="no",
                logging_strategy="no",
                disable_tqdm=not show_progress,
                bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # TRL's configs default to bf16
                **hyperparameters,
            )
            train_phase(trainer_class(model, args=args, train_dataset=dataset, processing_class=tokenizer))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(partial, path)  # atomic: a crash never leaves a half-written model in the cache
    return models


def train_phase(trainer) -> None:
    quiet_callbacks(trainer)  # TRL's trainers would print their raw log dicts among the run's own output
    trainer.train()
    trainer.save_model()


def _base_policy(world: ToyWorld):
    tokenizer = word_tokenizer(world.corpus())
    return tiny_causal_lm(tokenizer, **MODEL_SIZE), tokenizer


def _reward_model_from(policy_path: str):
    model = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1)
    return model, AutoTokenizer.from_pretrained(policy_path)
