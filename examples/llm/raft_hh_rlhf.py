"""The paper's HH-RLHF setup (Dong et al. 2023, section 4.1), end to end.

1. Data: `Dahoas/full-hh-rlhf` (prompt / chosen / rejected columns) or `Anthropic/hh-rlhf` (whole "\\n\\nHuman: ...
   \\n\\nAssistant: ..." transcripts, split at the last "\\n\\nAssistant:"). Prompts over 256 tokens are dropped.
2. SFT: the base model fine-tuned on the chosen responses (TRL's SFTTrainer), unless it is already an SFT model.
3. Reward model: trained on the preference pairs with the pairwise loss (TRL's RewardTrainer), unless given.
4. RAFT with the paper's defaults (b=2048, K=8, temperature 0.85, lr 2e-5, 2 epochs a stage, 128 new tokens).
5. Evaluation on held-out prompts before and after: reward, perplexity on the chosen responses, MSTTR-100,
   Distinct-1/2, Unique-1/2, length (the paper's Table 3), in `output_dir/summary.json`.

The paper's run, on GPUs:

    accelerate launch examples/llm/raft_hh_rlhf.py --base_model_name_or_path huggyllama/llama-7b \\
        --reward_base_model_name_or_path openlm-research/open_llama_3b --bf16 true --output_dir runs/hh

Add `--use_peft true` for LoRA in the SFT and reward phases (the RAFT phase fine-tunes the whole policy),
`--sft_model_name_or_path` / `--reward_model_name_or_path` to skip a phase with models you already have. Every
RAFTConfig field is a flag.
"""

import os
import sys
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict, load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer, TrlParser

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.reporting.summary import train_and_report

ASSISTANT = "\n\nAssistant:"
PAPER_DEFAULTS = dict(
    output_dir="runs/raft-hh",
    num_stages=10,
    prompts_per_stage=2048,
    num_generations=8,
    temperature=0.85,
    learning_rate=2e-5,
    lr_scheduler_type="linear",
    epochs_per_stage=2,
    max_completion_length=128,
    max_prompt_length=256,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=8,
    save_strategy="epoch",
)


@dataclass
class HHArguments:
    dataset_name: str = field(
        default="Dahoas/full-hh-rlhf", metadata={"help": "Dahoas/full-hh-rlhf, Anthropic/hh-rlhf or a local copy."}
    )
    base_model_name_or_path: str = field(
        default="huggyllama/llama-7b", metadata={"help": "Base model that SFT starts from (paper: LLaMA-7B)."}
    )
    sft_model_name_or_path: str | None = field(
        default=None, metadata={"help": "An SFT model to start RAFT from; skips the SFT phase."}
    )
    reward_base_model_name_or_path: str = field(
        default="openlm-research/open_llama_3b", metadata={"help": "Base of the reward model (paper: Open-LLaMA-3B)."}
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A trained reward model; skips reward-model training."}
    )
    sft_epochs: float = field(default=1.0, metadata={"help": "Epochs of SFT on the chosen responses."})
    reward_epochs: float = field(default=1.0, metadata={"help": "Epochs of reward-model training."})
    num_eval_prompts: int = field(default=500, metadata={"help": "Held-out prompts evaluated before and after."})
    use_peft: bool = field(
        default=False, metadata={"help": "LoRA adapters for the SFT and reward phases (merged after each)."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})


def split_transcript(transcript: str) -> tuple[str, str]:
    """An Anthropic/hh-rlhf transcript as (prompt up to and including the last "Assistant:", final response)."""
    cut = transcript.rindex(ASSISTANT) + len(ASSISTANT)
    return transcript[:cut], transcript[cut:]


def to_preference_format(example: dict) -> dict:
    """One row in the prompt / chosen / rejected format, from either dataset's format."""
    if "prompt" in example:
        return {"prompt": example["prompt"], "chosen": example["chosen"], "rejected": example["rejected"]}
    prompt, chosen = split_transcript(example["chosen"])
    return {"prompt": prompt, "chosen": chosen, "rejected": split_transcript(example["rejected"])[1]}


def prepare_hh(dataset: DatasetDict, tokenizer, max_prompt_tokens: int, num_eval_prompts: int) -> dict[str, Dataset]:
    """The datasets of every phase: `sft` (prompt, completion), `pairs` (prompt, chosen, rejected), `prompts`
    (RAFT's), and held-out `eval_prompts` and `eval_chosen` (prompt, completion), prompts over `max_prompt_tokens`
    tokens dropped."""
    prepared = {}
    for split in ("train", "test"):
        rows = dataset[split].map(to_preference_format, remove_columns=dataset[split].column_names)
        prepared[split] = rows.filter(lambda row: len(tokenizer(row["prompt"])["input_ids"]) <= max_prompt_tokens)
    train, test = prepared["train"], prepared["test"].select(range(min(num_eval_prompts, len(prepared["test"]))))
    return {
        "sft": train.rename_column("chosen", "completion").remove_columns("rejected"),
        "pairs": train,
        "prompts": train.select_columns(["prompt"]),
        "eval_prompts": test.select_columns(["prompt"]),
        "eval_chosen": test.rename_column("chosen", "completion").remove_columns("rejected"),
    }


def phase_args(config_class, raft_args: RAFTConfig, output_dir: str, epochs: float):
    """A TRL config for the SFT or reward phase that shares the run's precision, batch size and seed."""
    return config_class(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=raft_args.learning_rate,
        per_device_train_batch_size=raft_args.per_device_train_batch_size,
        gradient_accumulation_steps=raft_args.gradient_accumulation_steps,
        bf16=raft_args.bf16,
        gradient_checkpointing=raft_args.gradient_checkpointing,
        seed=raft_args.seed,
        report_to=raft_args.report_to,
        save_strategy="no",
        disable_tqdm=raft_args.disable_tqdm,
    )


def lora_config(hh: HHArguments, task_type: str) -> LoraConfig | None:
    return LoraConfig(r=hh.lora_r, lora_alpha=hh.lora_alpha, task_type=task_type) if hh.use_peft else None


def train_phase(trainer, output_dir: str) -> str:
    """Train, merge LoRA adapters if any, and save model and tokenizer; returns the saved path."""
    trainer.train()
    model = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
    model.save_pretrained(output_dir)
    trainer.processing_class.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str]) -> dict:
    parser = TrlParser((HHArguments, RAFTConfig))
    parser.set_defaults(**PAPER_DEFAULTS)
    hh, args = parser.parse_args_and_config(argv)

    tokenizer = AutoTokenizer.from_pretrained(hh.sft_model_name_or_path or hh.base_model_name_or_path)
    data = prepare_hh(load_dataset(hh.dataset_name), tokenizer, args.max_prompt_length, hh.num_eval_prompts)

    sft_path = hh.sft_model_name_or_path
    if sft_path is None:
        trainer = SFTTrainer(
            AutoModelForCausalLM.from_pretrained(hh.base_model_name_or_path),
            args=phase_args(SFTConfig, args, os.path.join(args.output_dir, "sft"), hh.sft_epochs),
            train_dataset=data["sft"],
            processing_class=tokenizer,
            peft_config=lora_config(hh, "CAUSAL_LM"),
        )
        sft_path = train_phase(trainer, os.path.join(args.output_dir, "sft"))

    reward_path = hh.reward_model_name_or_path
    if reward_path is None:
        reward_tokenizer = AutoTokenizer.from_pretrained(hh.reward_base_model_name_or_path)
        reward_model = AutoModelForSequenceClassification.from_pretrained(
            hh.reward_base_model_name_or_path, num_labels=1
        )
        trainer = RewardTrainer(
            reward_model,
            args=phase_args(RewardConfig, args, os.path.join(args.output_dir, "reward"), hh.reward_epochs),
            train_dataset=data["pairs"],
            processing_class=reward_tokenizer,
            peft_config=lora_config(hh, "SEQ_CLS"),
        )
        reward_path = train_phase(trainer, os.path.join(args.output_dir, "reward"))

    trainer = RAFTTrainer(sft_path, reward_path, args=args, train_dataset=data["prompts"])
    return train_and_report(trainer, data["eval_prompts"], data["eval_chosen"])


if __name__ == "__main__":
    main(sys.argv[1:])
