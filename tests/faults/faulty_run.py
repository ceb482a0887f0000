"""A tiny RAFT run that a fault-injection test kills where it says (tests/test_faults.py, benchmarks/).

    python faulty_run.py OUTPUT_DIR [--fault PHASE:N[:SIGNAL][@RANK]] [--resume] [--num_stages 3] [--raft_plus_plus]

PHASE:N is where the fault strikes: `generate:S`, `score:S` or `write:S` (while stage S generates, is scored, or has
its stage file half written), `step:N` (inside optimizer step N, before its backward pass) or `checkpoint:N` (while
checkpoint N is being saved, after its model and optimizer, before its random state and Trainer state). SIGNAL is
KILL (default), TERM or INT, sent by the process to itself; @RANK limits the fault to one process. Every phase the
run enters is appended to OUTPUT_DIR/../events.log as "<rank> <phase> <n>", for the test to count. The final
weights go to OUTPUT_DIR/final. `--raft_plus_plus` trains with RAFT++ and a KL loss (old and reference log-probs).
Launched with tests/multiprocess/fsdp_cpu.yaml, the run is sharded with FSDP2 (tests/multiprocess/fsdp_on_cpu.py).
"""

import argparse
import os
import signal
import sys

import torch
from datasets import Dataset

import raft_trainer.stage_trainer
from raft_trainer import RAFTConfig, RAFTTrainer
from raft_trainer.files import atomic_path
from raft_trainer.tasks.toy.tiny import tiny_causal_lm, word_tokenizer

WORDS = "apple banana cherry dog egg fish say something tell me a word please".split()
PROMPTS = ["say something", "tell me a word", "say a word please", "tell me something", "say a word", "tell me"]
STEPS_PER_STAGE = 4  # 4 prompts kept a stage, 2 epochs in batches of 2
RANK = int(os.environ.get("RANK", "0"))
if os.environ.get("ACCELERATE_USE_FSDP") == "true":  # accelerate takes the FSDP config on CPUs
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "multiprocess"))
    import fsdp_on_cpu  # noqa: F401


def parse_fault(spec: str | None) -> tuple | None:
    if spec is None:
        return None
    spec, _, rank = spec.partition("@")
    phase, number, *name = spec.split(":")
    return phase, int(number), getattr(signal, f"SIG{name[0] if name else 'KILL'}"), int(rank) if rank else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--fault")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--num_stages", type=int, default=3)
    parser.add_argument("--raft_plus_plus", action="store_true")
    options = parser.parse_args()
    fault = parse_fault(options.fault)
    events = os.path.join(os.path.dirname(os.path.abspath(options.output_dir)), "events.log")

    def enter(phase: str, number: int) -> None:
        """Record that the run entered `phase` number `number`; strike if the fault is set there."""
        with open(events, "a") as file:
            file.write(f"{RANK} {phase} {number}\n")
        if fault is not None and fault[:2] == (phase, number) and fault[3] in (None, RANK):
            os.kill(os.getpid(), fault[2])

    class FaultyTrainer(RAFTTrainer):
        def generate(self, prompt_indices, prompts):
            candidates = super().generate(prompt_indices, prompts)
            enter("generate", self.current_stage())  # generated, not yet on disk
            return candidates

        def training_step(self, *args, **kwargs):
            enter("step", self.state.global_step + 1)
            return super().training_step(*args, **kwargs)

        def _save_rng_state(self, output_dir):
            enter("checkpoint", self.state.global_step)
            super()._save_rng_state(output_dir)

    def share_of_apple(completions, trainer_state, **kwargs):
        enter("score", trainer_state.global_step // STEPS_PER_STAGE)
        return [text.split().count("apple") / max(1, len(text.split())) for text in completions]

    write_stage_file = raft_trainer.stage_trainer.write_stage_file

    def half_written_stage_file(path, columns):
        stage = int(os.path.basename(path)[len("stage_") : -len(".jsonl")])
        if fault is not None and fault[:2] == ("write", stage) and fault[3] in (None, RANK):
            with atomic_path(path) as partial, open(partial, "w") as file:
                file.write('{"stage": ')  # the first bytes of the file, then the fault
                file.flush()
                enter("write", stage)
        else:
            enter("write", stage)
        write_stage_file(path, columns)

    raft_trainer.stage_trainer.write_stage_file = half_written_stage_file

    tokenizer = word_tokenizer(WORDS)
    torch.manual_seed(0)
    model = tiny_causal_lm(tokenizer, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    args = RAFTConfig(
        output_dir=options.output_dir,
        use_cpu=True,
        num_stages=options.num_stages,
        prompts_per_stage=4,
        num_generations=3,
        max_completion_length=6,
        temperature=options.temperature,
        epochs_per_stage=2,
        per_device_train_batch_size=2 if "WORLD_SIZE" not in os.environ else 1,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=2,  # one checkpoint inside each stage, one at its end
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        **({"loss_type": "raft++", "kl_loss_coef": 0.1} if options.raft_plus_plus else {}),
    )
    prompts = Dataset.from_dict({"prompt": PROMPTS})
    trainer = FaultyTrainer(model, share_of_apple, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    trainer.save_model(os.path.join(options.output_dir, "final"))
    # A script ends a run of many processes so (under FSDP, the gloo groups its checkpoints made would otherwise
    # abort the exit: "terminate called without an active exception"). The barrier first: a process that tears its
    # groups down while another still finishes the final save's collectives aborts that one (seen under ZeRO-3).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
