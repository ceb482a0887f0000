"""Generation throughput of RAFT's sampling against the fastest plain `model.generate` this machine can be set up for.

One stage's worth of sampling on the real model: 32 arithmetic prompts x 8 samples of at most 16 new tokens,
SmolLM2-135M-Instruct. Plain `generate` is tried with several sequences per call (batch size), both attention
implementations, and with `--static_cache` a static KV cache (with `torch.compile` of the forward pass when
`--compile` is given); RAFT's own path (`sequences.generate_completions`, what `RAFTTrainer` calls, at its default
`generation_batch_size`: each prompt encoded once and its key-value cache copied for its 8 samples, where plain
`generate` encodes it 8 times) is timed in the same process, the repetitions of all configurations interleaved so
that drift hits all alike. Reported: completions/s, generated tokens/s (up to each completion's eos) and the ratio to
the fastest. transformers' continuous batching (`generate_batch` over a paged key-value cache, what
`use_transformers_continuous_batching` turns on) is timed beside them.

    python benchmarks/generation_throughput.py --repeats 2                   # about 15 minutes on 2 cores
    python benchmarks/generation_throughput.py --repeats 2 --static_cache --compile
    python benchmarks/generation_throughput.py --repeats 2 --only "sdpa, batch 64" "RAFT's"
    python benchmarks/generation_throughput.py --repeats 2 --only "RAFT's"             # prompt cache vs continuous
"""

import argparse
import copy
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raft_trainer import RAFTConfig
from raft_trainer.models import packaged_smollm2
from raft_trainer.sequences import candidate_generation_config, generate_completions, tokenize_prompts
from raft_trainer.tasks.arithmetic import arithmetic_dataset

PROMPTS, SAMPLES, NEW_TOKENS = 32, 8, 16


def plain_generate(model, prompt_ids, generation_config, batch_size: int) -> list[list[int]]:
    """The floor: left-padded batches of `batch_size` sequences straight into `model.generate`, nothing else."""
    config = copy.copy(generation_config)
    config.num_return_sequences = SAMPLES
    per_call = max(1, batch_size // SAMPLES)
    completions = []
    for start in range(0, len(prompt_ids), per_call):
        batch = prompt_ids[start : start + per_call]
        width = max(map(len, batch))
        input_ids = torch.tensor([[config.pad_token_id] * (width - len(ids)) + ids for ids in batch])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        completions.extend(output[:, width:].tolist())
    return completions


def generated_tokens(completions: list[list[int]], eos_token_ids: set[int], pad_token_id: int) -> int:
    total = 0
    for ids in completions:
        for position, token in enumerate(ids):
            if token in eos_token_ids:
                total += position + 1
                break
        else:
            total += sum(token != pad_token_id for token in ids)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--static_cache", action="store_true", help="Also try the static KV cache.")
    parser.add_argument("--compile", action="store_true", help="Also try torch.compile with the static cache.")
    parser.add_argument(
        "--only", nargs="+", help='Run only the configurations whose name holds one of these, e.g. "sdpa, batch 64".'
    )
    options = parser.parse_args()
    path = packaged_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    models = {
        impl: AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl).eval() for impl in ("sdpa", "eager")
    }
    prompts = arithmetic_dataset("sums", num_train=PROMPTS)["train"]
    _, prompt_ids = tokenize_prompts(prompts, tokenizer, max_prompt_length=None)
    args = RAFTConfig(output_dir="unused", max_completion_length=NEW_TOKENS, temperature=1.0, report_to="none")
    config = candidate_generation_config(models["sdpa"], tokenizer, args)
    static = copy.copy(config)
    static.cache_implementation = "static"
    eos = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])

    runs = {}
    for batch_size in (64, 256):
        runs[f"plain generate, sdpa, batch {batch_size}"] = lambda b=batch_size: plain_generate(
            models["sdpa"], prompt_ids, config, b
        )
    runs["plain generate, eager, batch 256"] = lambda: plain_generate(models["eager"], prompt_ids, config, 256)
    if options.static_cache:
        runs["plain generate, sdpa, batch 256, static cache"] = lambda: plain_generate(
            models["sdpa"], prompt_ids, static, 256
        )
    if options.compile:
        compiled = AutoModelForCausalLM.from_pretrained(path).eval()
        compiled.forward = torch.compile(compiled.forward)
        runs["plain generate, sdpa, batch 256, static cache, torch.compile"] = lambda: plain_generate(
            compiled, prompt_ids, static, 256
        )
    default_batch = RAFTConfig.__dataclass_fields__["generation_batch_size"].default
    for batch_size in sorted({default_batch, 256}):
        runs[f"RAFT's generate_completions, batch {batch_size}"] = lambda b=batch_size: generate_completions(
            models["sdpa"], prompt_ids, config, SAMPLES, b, show_progress=False
        )
    # transformers' continuous batching with paged attention (generate_batch: use_transformers_continuous_batching).
    runs["RAFT's generate_completions, continuous batching"] = lambda: generate_completions(
        models["sdpa"], prompt_ids, config, SAMPLES, default_batch, show_progress=False, continuous_batching={}
    )

    if options.only:
        runs = {name: run for name, run in runs.items() if any(part in name for part in options.only)}
    seconds = {name: [] for name in runs}
    tokens = {}
    for run in runs.values():  # a warm-up of each (and compilation) before anything is timed
        torch.manual_seed(0)
        run()
    for repeat in range(options.repeats):
        for name, run in runs.items():
            torch.manual_seed(0)
            start = time.perf_counter()
            completions = run()
            seconds[name].append(time.perf_counter() - start)
            tokens[name] = generated_tokens(completions, eos, config.pad_token_id)
            print(f"repeat {repeat}: {name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    plain = [name for name in medians if name.startswith("plain")]
    fastest = min(plain or medians, key=medians.get)  # the fastest plain generate, or of all when none ran
    print(
        f"{PROMPTS} prompts x {SAMPLES} samples, at most {NEW_TOKENS} new tokens, {torch.get_num_threads()} threads; "
        f"median of {options.repeats}\n"
    )
    print(f"| configuration | s | completions/s | tokens/s | x {fastest} |\n|---|---|---|---|---|")
    for name, value in medians.items():
        print(
            f"| {name} | {value:.2f} | {PROMPTS * SAMPLES / value:.0f} | {tokens[name] / value:.0f} | "
            f"x{value / medians[fastest]:.2f} |"
        )


if __name__ == "__main__":
    main()
