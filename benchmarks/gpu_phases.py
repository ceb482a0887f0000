"""On a GPU: CUDA peak memory of each RAFT phase, and sampling throughput with `transformers` and with vLLM.

Runs one RAFT stage per configuration on the real model (SmolLM2-135M-Instruct by default, any causal LM with
`--model`), on the arithmetic task: `--prompts` prompts x 8 samples of at most 64 new tokens, the exact-answer
reward, one epoch at batch 8. Each configuration is a process of its own, so that its CUDA peaks are its own.
Reported per configuration: the stage's `memory/generate_peak_mb`, `memory/score_peak_mb`, `memory/train_peak_mb`
(peak allocated CUDA memory of each phase), the run's peak, and the generation phase's completions/s.

    python benchmarks/gpu_phases.py                                  # transformers' generate, then vLLM if installed
    python benchmarks/gpu_phases.py --model Qwen/Qwen2.5-0.5B-Instruct --prompts 256 --no_vllm

Needs a CUDA GPU (and `pip install vllm` for the vLLM rows); writes nothing but its table (and `--output_dir`).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

CONFIGURATIONS = {
    "transformers generate, full fine-tuning": {},
    "transformers generate, gradient checkpointing": {"gradient_checkpointing": True},
    "vLLM colocate (sleep mode), full fine-tuning": {"use_vllm": True},
}


def worker(configuration: dict, model: str, prompts: int, output_dir: str) -> dict:
    import torch

    from raft_trainer import RAFTConfig, RAFTTrainer
    from raft_trainer.memory import process_peak_mb
    from raft_trainer.reporting.console import quiet_dependencies
    from raft_trainer.rewards.rules import exact_answer_reward
    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    quiet_dependencies()
    vllm = configuration.get("use_vllm", False)
    args = RAFTConfig(
        output_dir=output_dir,
        num_stages=1,
        prompts_per_stage=prompts,
        num_generations=8,
        max_completion_length=64,
        per_device_train_batch_size=8,
        epochs_per_stage=1,
        learning_rate=1e-5,
        bf16=True,
        generation_batch_size=512,
        gradient_checkpointing=configuration.get("gradient_checkpointing", False),
        use_vllm=vllm,
        vllm_mode="colocate",
        vllm_enable_sleep_mode=vllm,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        model_init_kwargs={"dtype": "bfloat16"},
    )
    data = arithmetic_dataset("sums", num_train=max(256, prompts))["train"]
    trainer = RAFTTrainer(model, exact_answer_reward, args=args, train_dataset=data)
    timed = {}
    generate = trainer.generate

    def timed_generate(*arguments, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        candidates = generate(*arguments, **kwargs)
        torch.cuda.synchronize()
        timed["seconds"] = time.perf_counter() - start
        return candidates

    trainer.generate = timed_generate
    trainer.train()
    record = next(record for record in trainer.state.log_history if "stage" in record)
    return {
        **{phase: record[f"memory/{phase}_peak_mb"] for phase in ("generate", "score", "train")},
        "peak": process_peak_mb("cuda"),
        "completions_per_second": prompts * 8 / timed["seconds"],
        "device": torch.cuda.get_device_name(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--no_vllm", action="store_true")
    parser.add_argument("--output_dir", default="runs/gpu-phases")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker is not None:
        out = os.path.join(options.output_dir, str(list(CONFIGURATIONS).index(options.worker)))
        print(json.dumps(worker(CONFIGURATIONS[options.worker], options.model, options.prompts, out)))
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_phases.py measures CUDA memory: run it on a machine with a CUDA GPU.")
    names = [name for name in CONFIGURATIONS if not (CONFIGURATIONS[name].get("use_vllm") and options.no_vllm)]
    if importlib.util.find_spec("vllm") is None:
        names = [name for name in names if not CONFIGURATIONS[name].get("use_vllm")]
        print("vllm is not installed: its rows are left out (pip install vllm).", flush=True)
    print(
        f"| configuration ({options.model}, {options.prompts} prompts x 8, 64 new tokens) | generate peak (MB) | "
        "score peak (MB) | train peak (MB) | run peak (MB) | completions/s |\n|---|---|---|---|---|---|",
        flush=True,
    )
    for name in names:
        command = [sys.executable, __file__, "--worker", name, "--model", options.model]
        command += ["--prompts", str(options.prompts), "--output_dir", options.output_dir]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"| {name} | failed: {result.stderr.strip().splitlines()[-1] if result.stderr else '?'} |||||")
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {r['generate']:.0f} | {r['score']:.0f} | {r['train']:.0f} | {r['peak']:.0f} | "
            f"{r['completions_per_second']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
