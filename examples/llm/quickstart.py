"""RAFT in a minute on a laptop: a tiny random GPT-2 learns to say "apple".

    python examples/llm/quickstart.py --output_dir runs/quickstart

Every RAFTConfig field is a flag (e.g. --num_stages 8 --ranking global --beta 0.05). Nothing is downloaded: the
model and its word-level tokenizer are built from configs. The reward is the share of the word "apple" in a
completion, so the policy's mean reward should climb stage after stage.
"""

import sys

import torch
from datasets import Dataset
from transformers import HfArgumentParser

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.tasks.toy.tiny import tiny_causal_lm, word_tokenizer

WORDS = "apple banana cherry dog egg fish grape house ice juice kite lemon say tell me a word something".split()
DEFAULTS = dict(
    output_dir="runs/quickstart",
    num_stages=4,
    prompts_per_stage=16,
    num_generations=8,
    max_completion_length=16,
    epochs_per_stage=4,
    per_device_train_batch_size=8,
    learning_rate=1e-2,
    save_strategy="no",
)


def share_of_apple(completions, **kwargs) -> list[float]:
    return [text.split().count("apple") / max(1, len(text.split())) for text in completions]


def main(argv: list[str]) -> list[dict]:
    parser = HfArgumentParser(RAFTConfig)
    parser.set_defaults(**DEFAULTS)
    (args,) = parser.parse_args_into_dataclasses(argv)
    torch.manual_seed(args.seed)
    tokenizer = word_tokenizer(WORDS)
    model = tiny_causal_lm(tokenizer)
    prompts = Dataset.from_dict({"prompt": ["say something", "tell me a word", "say a word", "tell me something"]})

    trainer = RAFTTrainer(model, share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()

    stages = [record for record in trainer.state.log_history if "stage" in record]
    print(f"\n{'stage':>5} {'policy reward':>14} {'kept reward':>12} {'SFT loss':>9}")
    for record in stages:
        print(
            f"{record['stage']:>5} {record['reward_mean']:>14.3f} {record['reward_kept_mean']:>12.3f} "
            f"{record['loss']:>9.3f}"
        )
    print(f"\nModel saved to {args.output_dir}; stage files in {args.output_dir}/stages/")
    return stages


if __name__ == "__main__":
    main(sys.argv[1:])
