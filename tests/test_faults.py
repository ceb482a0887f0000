"""Fault injection: a run killed anywhere (SIGKILL, not an exception), or stopped by SIGTERM/SIGINT, and resumed each
time, ends exactly as the run that was never interrupted, and never generates or scores a finished phase again.

The runs are separate processes of tests/faults/faulty_run.py (a tiny 3-stage RAFT run, 4 optimizer steps a stage,
a checkpoint every 2); `benchmarks/fault_injection.py` is the longer version, with faults at random points.
"""

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raft_trainer.checkpoints import last_complete_checkpoint

SCRIPT = Path(__file__).parent / "faults" / "faulty_run.py"
STAGE_FILES = ["stage_000.jsonl", "stage_001.jsonl", "stage_002.jsonl"]
TWO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
TWO_PROCESSES += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]

# In the order a run reaches them: (fault, what the process's exit status must be).
FAULTS = [
    ("score:0", -signal.SIGKILL),  # no checkpoint yet: only stage 0's generated candidates survive
    ("write:0", -signal.SIGKILL),  # stage 0's file half written
    ("step:3", -signal.SIGKILL),  # inside stage 0's training, after the checkpoint at step 2
    ("generate:1", -signal.SIGKILL),  # stage 1 generated, not yet on disk: generated again
    ("checkpoint:6", -signal.SIGKILL),  # checkpoint-6 half saved: the resumed run passes over it
    ("generate:2:TERM", 128 + signal.SIGTERM),  # a clean stop once stage 2's candidates are on disk
    ("score:2", -signal.SIGKILL),  # stage 2 scored again, not generated again
    ("step:11:INT", 128 + signal.SIGINT),  # Ctrl-C: step 11 finishes and is checkpointed
]


def run(output_dir: Path, *options: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable]), str(SCRIPT), str(output_dir), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def finished(output_dir: Path, *options: str, launcher: list[str] | None = None) -> None:
    result = run(output_dir, *options, launcher=launcher)
    # Under a launcher the process that failed first may not be the one printing last: show every error line too.
    errors = "\n".join(line for line in result.stderr.splitlines() if "Error" in line)
    assert result.returncode == 0, f"{errors}\n...\n{result.stderr[-3000:]}"


def events(output_dir: Path) -> collections.Counter:
    """How many times each (rank, phase, number) was entered, over all the runs in `output_dir`."""
    lines = (output_dir.parent / "events.log").read_text().split()
    return collections.Counter(zip(lines[0::3], lines[1::3], map(int, lines[2::3])))


def assert_same_run(output_dir: Path, reference: Path) -> None:
    """The same stage files, byte for byte, and nothing half written or left in flight; the same final weights."""
    assert sorted(os.listdir(output_dir / "stages")) == STAGE_FILES
    for name in STAGE_FILES:
        assert (output_dir / "stages" / name).read_bytes() == (reference / "stages" / name).read_bytes(), name
    assert not (output_dir / "in_flight").exists()
    weights, expected = (load_file(path / "final" / "model.safetensors") for path in (output_dir, reference))
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "out"
    finished(output_dir)
    return output_dir


def test_killed_at_every_phase_and_resumed_it_is_the_uninterrupted_run(uninterrupted, tmp_path):
    output_dir = tmp_path / "out"
    for fault, status in FAULTS:
        result = run(output_dir, "--resume", "--fault", fault)
        assert result.returncode == status, (fault, result.stderr[-3000:])
        if fault == "score:0":  # killed before any checkpoint: stage 0's candidates are on disk all the same
            assert last_complete_checkpoint(str(output_dir)) is None
            assert os.listdir(output_dir / "in_flight") == ["stage_000.generated.process_0.pt"]
        if fault == "write:0":  # the half-written stage file is not under its name
            assert not (output_dir / "stages" / "stage_000.jsonl").exists()
        if fault == "checkpoint:6":
            assert not (output_dir / "checkpoint-6" / "trainer_state.json").exists()
            assert last_complete_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-4")
        if status > 0:  # a signal the run caught: it says how to resume
            assert "Resume with trainer.train(resume_from_checkpoint=True)" in result.stderr
        if fault == "step:11:INT":  # saved by the interruption (the schedule saves even steps only)
            assert last_complete_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-11")
    finished(output_dir, "--resume")

    assert_same_run(output_dir, uninterrupted)
    entered = events(output_dir)
    # Generated again only where the candidates had not reached the disk (stage 1), scored again only where the
    # rewards had not (stages 0 and 2): the crash while scoring did not generate its stage again.
    assert [entered["0", "generate", stage] for stage in range(3)] == [1, 2, 1]
    assert [entered["0", "score", stage] for stage in range(3)] == [2, 1, 2]
    assert entered["0", "step", 12] == 1


def test_a_run_resumes_only_from_its_own_stage_files(tmp_path):
    # Stage 0 killed while scoring; resumed with another sampling temperature, its candidates are not used.
    output_dir = tmp_path / "out"
    assert run(output_dir, "--resume", "--fault", "score:0").returncode == -signal.SIGKILL
    result = run(output_dir, "--resume", "--fault", "step:1", "--temperature", "0.5")
    assert "differs in temperature" in result.stderr
    assert events(output_dir)["0", "generate", 0] == 2


def test_two_processes_one_killed_or_stopped_the_other_stops_too_and_the_resumed_run_is_the_same(tmp_path):
    reference = tmp_path / "reference" / "out"
    finished(reference, launcher=TWO_PROCESSES)

    output_dir = tmp_path / "crashed" / "out"
    killed = run(output_dir, "--resume", "--fault", "step:6@1", launcher=TWO_PROCESSES)
    # The launcher stops the surviving process and names the one that died.
    assert killed.returncode != 0
    assert "rank      : 1 (local_rank: 1)" in killed.stderr and "SIGKILL" in killed.stderr
    # SIGTERM to the second process only, once stage 2 is generated: both stop there (the first process, which
    # did not get the signal, reports the stop), with stage 2's candidates on disk.
    stopped = run(output_dir, "--resume", "--fault", "generate:2:TERM@1", launcher=TWO_PROCESSES)
    assert stopped.returncode != 0 and "stopped by SIGTERM at step 8 (stage 2 of 3)" in stopped.stderr
    assert sorted(os.listdir(output_dir / "in_flight")) == [
        "stage_002.generated.process_0.pt",
        "stage_002.generated.process_1.pt",
    ]
    finished(output_dir, "--resume", launcher=TWO_PROCESSES)

    assert_same_run(output_dir, reference)
    entered = events(output_dir)
    for rank in ("0", "1"):
        assert [entered[rank, "generate", stage] for stage in range(3)] == [1, 1, 1]


SHARDED_CONFIGS = Path(__file__).parent / "multiprocess"


@pytest.mark.parametrize("config", ["fsdp_cpu.yaml", "deepspeed_zero3_cpu.yaml"])
def test_a_sharded_run_killed_inside_a_stage_resumes_to_the_uninterrupted_run(tmp_path, config):
    # RAFT++ with a KL loss over 2 CPU processes, sharded by FSDP2 (tests/multiprocess/fsdp_on_cpu.py) or partitioned
    # by ZeRO-3: the checkpoint holds the gathered model and the sharded optimizer's state; resumed from it, the run
    # ends bit for bit as the one never stopped (Adam's moments reloaded, not started again), and no stage is
    # generated twice.
    launcher = [*TWO_PROCESSES[:3], "--config_file", str(SHARDED_CONFIGS / config), "--dynamo_backend", "no"]
    reference = tmp_path / "reference" / "out"
    finished(reference, "--raft_plus_plus", launcher=launcher)

    output_dir = tmp_path / "crashed" / "out"
    killed = run(output_dir, "--raft_plus_plus", "--resume", "--fault", "step:6@1", launcher=launcher)
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr
    assert last_complete_checkpoint(str(output_dir)).endswith("checkpoint-4")  # stage 1 starts there
    finished(output_dir, "--raft_plus_plus", "--resume", launcher=launcher)

    assert_same_run(output_dir, reference)
    weights, expected = (load_file(path / "final" / "model.safetensors") for path in (output_dir, reference))
    assert all(torch.equal(weights[name], tensor) for name, tensor in expected.items())
    entered = events(output_dir)
    for rank in ("0", "1"):
        assert [entered[rank, "generate", stage] for stage in range(3)] == [1, 1, 1]


def test_sigterm_while_scoring_saves_a_checkpoint_and_the_resumed_run_neither_generates_nor_scores_again(
    make_model, tokenizer, prompts, make_args, tmp_path
):
    from raft_trainer import RAFTTrainer, TrainingInterrupted

    from .helpers import NO_DROPOUT, share_of_apple

    def trainer_for(output_dir, reward):
        args = make_args(output_dir=str(output_dir), num_stages=2, save_strategy="no", lr_scheduler_type="linear")
        model = make_model(seed=0, **NO_DROPOUT)
        return RAFTTrainer(model, reward, args=args, train_dataset=prompts, processing_class=tokenizer)

    reference = trainer_for(tmp_path / "reference", share_of_apple)
    reference.train()
    calls = []

    def terminated_at_stage_1(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends: the scoring in progress still finishes
        return share_of_apple(**kwargs)

    terminated_at_stage_1.__name__ = "share_of_apple"
    output_dir = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer_for(output_dir, terminated_at_stage_1).train()
    assert stopped.value.code == 128 + signal.SIGTERM and "stopped by SIGTERM" in stopped.value.message
    # save_strategy="no", yet the stop saved the steps of stage 0; stage 1's rewards wait in in_flight/.
    steps = reference.optimizer_steps_per_stage()
    assert last_complete_checkpoint(str(output_dir)) == str(output_dir / f"checkpoint-{steps}")
    assert os.listdir(output_dir / "in_flight") == ["stage_001.scored.process_0.pt"]

    resumed_calls = []

    def counting(**kwargs):
        resumed_calls.append(1)
        return share_of_apple(**kwargs)

    counting.__name__ = "share_of_apple"
    resumed = trainer_for(output_dir, counting)
    generate = resumed.generate
    generated = []
    resumed.generate = lambda *args: generated.append(args) or generate(*args)
    resumed.train(resume_from_checkpoint=True)
    assert generated == [] and resumed_calls == []
    for stage in range(2):
        name = f"stage_{stage:03d}.jsonl"
        assert (output_dir / "stages" / name).read_bytes() == (tmp_path / "reference" / "stages" / name).read_bytes()
    for (name, expected), actual in zip(reference.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(actual, expected, msg=name)
