"""Run by tests/test_multiprocess.py under `accelerate launch` with 2 CPU processes: a tiny RAFT run (or stage 0 of
one run phase by phase) whose stage files and per-process weights the test inspects."""

import json
import os
import sys

import torch
from datasets import Dataset
from peft import LoraConfig

from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.phases import finetune_phase, generate_phase, score_phase
from raft_trainer.tasks.toy.tiny import tiny_causal_lm, word_tokenizer

WORDS = "apple banana cherry dog egg fish say something tell me a word please".split()
PROMPTS = ["say something", "tell me a word", "say a word please", "tell me something", "say a word", "tell me"]
# Expert completions for two prompts, ranked with the model's samples in the "local+dataset" mode.
EXPERT = {"prompt": ["say something", "tell me", "tell me"], "completion": ["apple apple", "apple", "dog apple"]}


def share_of_apple(prompts, completions, **kwargs):
    # Record which candidates' prompts this process scored, for the test to check the split.
    with open(os.path.join(sys.argv[1], f"scored_rank{os.environ['RANK']}.jsonl"), "a") as file:
        file.write(json.dumps(prompts) + "\n")
    return [text.split().count("apple") / max(1, len(text.split())) for text in completions]


def one_right_answer(completions, **kwargs):
    # 1 for the first candidate process 0 scores, 0 for every other: with reward_threshold=1 a stage keeps one.
    first = os.environ["RANK"] == "0"
    return [float(first and i == 0) for i in range(len(completions))]


def main(output_dir: str, mode: str) -> None:
    """`mode`: "local" or "global" ranking, "local+dataset" (local ranking with `EXPERT` as candidate dataset),
    "phases" (stage 0 as three separate phases, local ranking), "one_kept" (RAFT++ with a KL loss, each stage
    keeping a single sample for the two processes), "raft++" (RAFT++ with a KL loss, the model saved) or "lora" (the
    same with a LoRA adapter, its base model saved first). Launched
    with fsdp_cpu.yaml and FSDP_ON_CPU=1, the run is sharded with FSDP2 and the sharded parameters are counted."""
    if os.environ.get("FSDP_ON_CPU") == "1":
        import fsdp_on_cpu  # noqa: F401  (accelerate takes the FSDP config on CPUs; beside this script)
    tokenizer = word_tokenizer(WORDS)
    torch.manual_seed(0)
    model = tiny_causal_lm(tokenizer, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    args = RAFTConfig(
        output_dir=output_dir,
        use_cpu=True,  # gloo across CPU processes
        num_stages=2,
        prompts_per_stage=5,  # odd: the two processes get unequal shares
        num_generations=3,
        ranking="global" if mode == "global" else "local",
        candidate_source="both" if mode == "local+dataset" else "model",
        max_completion_length=6,
        epochs_per_stage=1,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    if mode == "one_kept":
        args = RAFTConfig(**{**args.to_dict(), "loss_type": "raft++", "kl_loss_coef": 0.1, "reward_threshold": 1.0})
    if mode in ("raft++", "lora"):
        args = RAFTConfig(**{**args.to_dict(), "loss_type": "raft++", "kl_loss_coef": 0.1})
    peft_config = None
    if mode == "lora":  # the KL reference is the policy with its adapter off
        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
        if args.process_index == 0:
            model.save_pretrained(os.path.join(output_dir, "base"))
    prompts = Dataset.from_dict({"prompt": PROMPTS})
    if mode == "phases":
        generate_phase(model, args, prompts, 0, processing_class=tokenizer)
        score_phase(share_of_apple, args, 0)
        finetune_phase(model, args, 0, processing_class=tokenizer)
        save_weights(model, output_dir, args.process_index)
        count_sharded(model, output_dir, args.process_index)  # the finetune phase's Trainer shards it in place
        return
    trainer = RAFTTrainer(
        model,
        one_right_answer if mode == "one_kept" else share_of_apple,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        candidate_dataset=Dataset.from_dict(EXPERT) if mode == "local+dataset" else None,
        peft_config=peft_config,
    )
    reference_rows = []
    if trainer.ref_model is not None:  # which sequences this process's reference model read
        trainer.ref_model.register_forward_pre_hook(
            lambda module, args, kwargs: reference_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
        )
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(output_dir, f"reference_rows_rank{rank}.txt"), "w") as file:
        file.write(str(sum(reference_rows)))
    save_weights(trainer.model, output_dir, rank)
    with open(os.path.join(output_dir, f"steps_rank{rank}.txt"), "w") as file:
        file.write(str(trainer.state.global_step))
    if mode in ("raft++", "lora"):
        count_sharded(trainer.model_wrapped, output_dir, rank)
        trainer.save_model(os.path.join(output_dir, "final"))


def count_sharded(model, output_dir: str, rank: int) -> None:
    """Write [parameters sharded (DTensors of FSDP2, or partitioned by ZeRO-3), parameters] for the test."""
    from torch.distributed.tensor import DTensor

    parameters = list(model.parameters())
    sharded = sum(isinstance(p, DTensor) or getattr(p, "ds_numel", 0) > p.numel() for p in parameters)
    with open(os.path.join(output_dir, f"sharded_rank{rank}.json"), "w") as file:
        json.dump([sharded, len(parameters)], file)


def save_weights(model, output_dir: str, rank: int) -> None:
    from torch.distributed.tensor import DTensor

    # A sharded parameter is gathered whole (every process takes part, in the same order).
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    else:
        state = {name: t.full_tensor() if isinstance(t, DTensor) else t for name, t in model.state_dict().items()}
    torch.save(
        {name: tensor.detach().cpu() for name, tensor in state.items()},
        os.path.join(output_dir, f"weights_rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Leave the process group, as a launched script should (docs/distributed.md): a CPU process that exits with it
    # still open can abort once everything is written ("terminate called without an active exception").
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
