"""RAFT stages' wall time against their raw-compute floor, measured in the same process.

The floor does the same work with nothing around it, stage after stage: plain `model.generate` of the same prompts
(same batches, same sampling settings, same seed), one plain forward of the reward model over them, and the same
number of plain AdamW steps on each prompt's best sample, in batches of the same size. The ratio RAFT / floor is
RAFT's overhead: the Trainer (its one-time set-up included), ranking, stage files, logging. The same stages are also
run as decoupled phases (`raft_trainer.phases`: generate, score and fine-tune each loading its model from disk and
handing over files), whose ratio to RAFT is what decoupling costs. Repetitions alternate the three so that drift
hits all.

    python benchmarks/stage_overhead.py --repeats 5                  # 4 stages
    python benchmarks/stage_overhead.py --repeats 5 --num_stages 1   # the Trainer's one-time start weighs more
    python benchmarks/stage_overhead.py --model smollm2-135m-instruct --repeats 3 --num_stages 2
    python benchmarks/stage_overhead.py --model smollm2-135m-instruct --repeats 3 --num_stages 24 --prompts_per_stage 4
    python benchmarks/stage_overhead.py --model smollm2-135m-instruct --repeats 2 --num_stages 8 --prompts_per_stage 12
    python benchmarks/stage_overhead.py --model smollm2-135m-instruct --repeats 2 --num_stages 8 \
        --prompts_per_stage 6 --num_generations 16

With `--model smollm2-135m-instruct` the stages are the real model's on the arithmetic task (b=32, K=8, 16 new
tokens, the exact-answer reward function, one epoch at batch 8, best of K kept), and the phases are left out.
"""

import argparse
import os
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.cli import TOY_DEFAULTS
from raft_trainer.models import SMOLLM2, packaged_smollm2
from raft_trainer.phases import finetune_phase, generate_phase, score_phase
from raft_trainer.rewards.rules import exact_answer_reward
from raft_trainer.sequences import candidate_generation_config, generate_completions, sft_example, tokenize_prompts
from raft_trainer.stages.prompts import stage_prompt_indices
from raft_trainer.tasks.arithmetic import arithmetic_dataset
from raft_trainer.tasks.toy.pipeline import prepare_models
from raft_trainer.tasks.toy.world import make_world

STAGE = {key: TOY_DEFAULTS[key] for key in ("prompts_per_stage", "num_generations", "max_completion_length")}
STAGE.update(epochs_per_stage=2, per_device_train_batch_size=16, learning_rate=5e-4, generation_batch_size=256, seed=0)
REAL_STAGE = dict(prompts_per_stage=32, num_generations=8, max_completion_length=16, epochs_per_stage=1)
REAL_STAGE.update(per_device_train_batch_size=8, learning_rate=1e-5, generation_batch_size=256, seed=0)


def raft_stage_seconds(models, prompts, output_dir: str, num_stages: int) -> float:
    args = RAFTConfig(
        output_dir=output_dir, num_stages=num_stages, report_to="none", save_strategy="no", disable_tqdm=True, **STAGE
    )
    trainer = RAFTTrainer(models.policy_path, models.reward, args=args, train_dataset=prompts)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def phases_seconds(models, prompts, output_dir: str, num_stages: int) -> float:
    args = RAFTConfig(output_dir=output_dir, report_to="none", save_strategy="no", disable_tqdm=True, **STAGE)
    policy = models.policy_path
    start = time.perf_counter()
    for stage in range(num_stages):
        generate_phase(policy, args, prompts, stage)
        score_phase(models.reward, args, stage)
        policy = finetune_phase(policy, args, stage)
    return time.perf_counter() - start


def floor_seconds(models, prompts, num_stages: int) -> float:
    tokenizer = AutoTokenizer.from_pretrained(models.policy_path)
    policy = AutoModelForCausalLM.from_pretrained(models.policy_path)
    reward_model = None
    if not callable(models.reward):
        reward_model = AutoModelForSequenceClassification.from_pretrained(models.reward).eval()
    prompts, prompt_ids = tokenize_prompts(prompts, tokenizer, max_prompt_length=256)
    answers = prompts["answer"] if "answer" in prompts.column_names else None
    generation_config = candidate_generation_config(policy, tokenizer, RAFTConfig(output_dir=".", **STAGE))
    b, k, batch_size = STAGE["prompts_per_stage"], STAGE["num_generations"], STAGE["per_device_train_batch_size"]
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=STAGE["learning_rate"])

    start = time.perf_counter()
    set_seed(STAGE["seed"])
    for stage in range(num_stages):
        drawn = stage_prompt_indices(stage, b, len(prompt_ids), STAGE["seed"])
        stage_prompt_ids = [prompt_ids[i] for i in drawn]
        policy.eval()  # sampling in eval mode, as the trainer does (no dropout)
        completions = generate_completions(
            policy, stage_prompt_ids, generation_config, k, STAGE["generation_batch_size"], show_progress=False
        )
        if reward_model is None:  # a reward function of the completions and the prompts' answers
            texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
            scores = models.reward(completions=texts, answer=[answers[drawn[i // k]] for i in range(len(texts))])
        else:
            texts = [
                tokenizer.decode(stage_prompt_ids[i // k] + ids, skip_special_tokens=True) + tokenizer.eos_token
                for i, ids in enumerate(completions)
            ]
            scores = []
            with torch.no_grad():
                for first in range(0, len(texts), STAGE["generation_batch_size"]):
                    batch = texts[first : first + STAGE["generation_batch_size"]]
                    scores += reward_model(**tokenizer(batch, padding=True, return_tensors="pt")).logits[:, 0].tolist()
        # Each prompt's best sample (the earliest on ties), as best of K keeps: both sides train on the same kind of
        # samples, so their policies, and the lengths of what they sample next, stay alike.
        best = [max(range(i * k, (i + 1) * k), key=lambda j: (scores[j], -j)) for i in range(b)]
        examples = [sft_example(stage_prompt_ids[i], completions[j]) for i, j in enumerate(best)]
        policy.train()
        for _ in range(STAGE["epochs_per_stage"]):
            for first in range(0, b, batch_size):
                loss = policy(**collator(examples[first : first + batch_size])).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    global STAGE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num_stages", type=int, default=4)
    parser.add_argument("--model", choices=[SMOLLM2], default=None, help="The real model instead of the toy world.")
    parser.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/raft-trainer"))
    parser.add_argument("--prompts_per_stage", type=int, default=None, help="b (default: 64 toy, 32 real).")
    parser.add_argument("--num_generations", type=int, default=None, help="K (default: 8).")
    options = parser.parse_args()
    if options.model is None:
        world = make_world(seed=0)
        toy = prepare_models(world, options.cache_dir, seed=0)
        models = SimpleNamespace(policy_path=toy.policy_path, reward=toy.reward_model_path)
        prompts = world.train_prompts
    else:
        STAGE = REAL_STAGE
        models = SimpleNamespace(policy_path=packaged_smollm2(), reward=exact_answer_reward)
        prompts = arithmetic_dataset()["train"]
    for name in ("prompts_per_stage", "num_generations"):  # smaller stages, GRPO's update size say
        if getattr(options, name) is not None:
            STAGE = {**STAGE, name: getattr(options, name)}
    raft_times, floor_times, phases_times = [], [], []
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(options.repeats):
            raft_times.append(raft_stage_seconds(models, prompts, output_dir, options.num_stages))
            floor_times.append(floor_seconds(models, prompts, options.num_stages))
            if options.model is None:
                phases_dir = os.path.join(output_dir, "phases")
                phases_times.append(phases_seconds(models, prompts, phases_dir, options.num_stages))
    ratios = [raft / floor for raft, floor in zip(raft_times, floor_times)]
    b, k = STAGE["prompts_per_stage"], STAGE["num_generations"]
    print(
        f"{options.model or 'miniature world'}: {options.num_stages} stages of b={b} K={k}, {options.repeats} repeats"
    )
    print(f"RAFT         median {statistics.median(raft_times):.2f} s  {[round(t, 2) for t in raft_times]}")
    print(f"raw floor    median {statistics.median(floor_times):.2f} s  {[round(t, 2) for t in floor_times]}")
    print(f"overhead     median {statistics.median(ratios):.3f}x  (min {min(ratios):.3f}x, max {max(ratios):.3f}x)")
    if phases_times:
        phase_ratios = [phases / raft for phases, raft in zip(phases_times, raft_times)]
        print(f"phases       median {statistics.median(phases_times):.2f} s  {[round(t, 2) for t in phases_times]}")
        print(
            f"phases/RAFT  median {statistics.median(phase_ratios):.3f}x  "
            f"(min {min(phase_ratios):.3f}x, max {max(phase_ratios):.3f}x)"
        )


if __name__ == "__main__":
    main()
