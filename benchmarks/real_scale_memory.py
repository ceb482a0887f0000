"""RAFT against TRL's PPO and GRPO at real scale: peak memory and wall time, the real SmolLM2-135M-Instruct as policy.

PPO needs a reward model and a value model of their own; both are made here from the policy's weights (a
`AutoModelForSequenceClassification` with one label, its score head freshly initialised, seed 0, written to
`<output_dir>/reward_model`). Its reward is untrained: this compares memory and time only, and every method (RAFT
too) scores with the same model. The prompts are the arithmetic task's (`<output_dir>/data`, its train and test
splits as JSON lines). Then `raft-compare` trains each method in its own process on the same budget of completions,
at one learning rate, and reports each one's peak resident set and wall time; run it once more with
`--gradient_checkpointing` for the memory options.

    python benchmarks/real_scale_memory.py --output_dir runs/real-scale            # needs trl<1.13 for PPO
    python benchmarks/real_scale_memory.py --output_dir runs/real-scale-gc --gradient_checkpointing
"""

import argparse
import json
import os

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from raft_trainer.compare.cli import main as raft_compare
from raft_trainer.files import write_text
from raft_trainer.models import packaged_smollm2
from raft_trainer.tasks.arithmetic import arithmetic_dataset


def make_reward_model(policy: str, path: str) -> str:
    """A reward model of the policy's size and tokenizer, with an untrained score head (seed 0)."""
    if not os.path.isdir(path):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(policy)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def write_prompts(folder: str) -> str:
    for split, rows in arithmetic_dataset().items():
        lines = (json.dumps({"prompt": row["prompt"]}) for row in rows)
        write_text(os.path.join(folder, f"{split}.jsonl"), "\n".join(lines) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/real-scale")
    parser.add_argument("--methods", nargs="+", default=["raft", "ppo", "grpo"])
    parser.add_argument("--gradient_checkpointing", action="store_true")
    options = parser.parse_args()
    policy = packaged_smollm2()
    reward_model = make_reward_model(policy, os.path.join(options.output_dir, "reward_model"))
    data = write_prompts(os.path.join(options.output_dir, "data"))
    argv = ["--model_name_or_path", policy, "--reward_model_name_or_path", reward_model, "--dataset_name", data]
    argv += ["--output_dir", os.path.join(options.output_dir, "compare"), "--methods", *options.methods]
    # 128 completions of at most 16 tokens for every method: RAFT one stage of 16 prompts x 8, PPO 128 episodes,
    # GRPO 4 updates of 32 completions.
    argv += ["--num_stages", "1", "--prompts_per_stage", "16", "--num_generations", "8"]
    argv += ["--completions_per_update", "32", "--per_device_train_batch_size", "8", "--max_completion_length", "16"]
    argv += ["--epochs_per_stage", "1", "--temperature", "1.0", "--learning_rates", "1e-5"]
    argv += ["--num_eval_prompts", "40", "--num_curve_prompts", "8", "--generation_batch_size", "128"]
    if options.gradient_checkpointing:
        argv += ["--gradient_checkpointing", "true"]
    raft_compare(argv)


if __name__ == "__main__":
    main()
