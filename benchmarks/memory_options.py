"""Peak memory of a RAFT run with and without the memory options, each configuration in its own process.

A GPT-2 of about 40M parameters (random weights: memory does not depend on what the model knows) runs two stages
with the KL-penalised ranking (beta > 0, so a reference model is needed). Compared: full fine-tuning with a frozen
copy as reference; LoRA (`peft_config`), whose reference is the base under the disabled adapter and whose optimizer
holds the adapter only. On a GPU the peak allocated memory is reported; on the CPU the process's peak RSS.

    python benchmarks/memory_options.py
"""

import json
import resource
import subprocess
import sys
import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.tasks.toy.tiny import tiny_causal_lm, word_tokenizer

WORDS = [f"w{i}" for i in range(2000)]
CONFIGURATIONS = {
    "full fine-tuning + reference copy": {},
    "LoRA (peft_config), reference = disabled adapter": {"peft": True},
    "full fine-tuning + reference copy, offload_inactive_models": {"offload": True},
}


def reward_length(completions, **kwargs):
    return [float(len(text.split())) for text in completions]


def run(configuration: dict) -> float:
    """One run; returns its peak memory in MiB."""
    tokenizer = word_tokenizer(WORDS)
    torch.manual_seed(0)
    model = tiny_causal_lm(tokenizer, n_embd=512, n_layer=8, n_head=8, n_positions=128)
    prompts = Dataset.from_dict({"prompt": [" ".join(WORDS[i : i + 5]) for i in range(0, 320, 5)]})
    with tempfile.TemporaryDirectory() as output_dir:
        args = RAFTConfig(
            output_dir=output_dir,
            num_stages=2,
            prompts_per_stage=16,
            num_generations=4,
            max_completion_length=32,
            beta=0.05,
            per_device_train_batch_size=8,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            offload_inactive_models=configuration.get("offload", False),
        )
        peft_config = (
            LoraConfig(r=8, target_modules=["c_attn"], task_type="CAUSAL_LM") if "peft" in configuration else None
        )
        trainer = RAFTTrainer(
            model, reward_length, args=args, train_dataset=prompts, processing_class=tokenizer, peft_config=peft_config
        )
        trainer.train()
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    if len(sys.argv) == 2:  # a worker: run one configuration, print its peak
        print(json.dumps(run(json.loads(sys.argv[1]))))
        return
    peaks = {}
    for name, configuration in CONFIGURATIONS.items():
        output = subprocess.run(
            [sys.executable, __file__, json.dumps(configuration)], capture_output=True, text=True, check=True
        ).stdout
        peaks[name] = float(output.strip().splitlines()[-1])
    baseline = next(iter(peaks.values()))
    unit = "peak allocated (CUDA)" if torch.cuda.is_available() else "peak RSS (CPU)"
    print(f"| configuration | {unit}, MiB | ratio |\n|---|---|---|")
    for name, peak in peaks.items():
        print(f"| {name} | {peak:.0f} | {peak / baseline:.2f} |")


if __name__ == "__main__":
    main()
