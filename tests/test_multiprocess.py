"""RAFT under `accelerate launch` with 2 CPU processes: the stage is split, ranked whole, written once, and the
processes end with the same weights."""

import json
import os
import subprocess
import sys

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from peft import PeftModel
from transformers import AutoModelForCausalLM

from raft_trainer.files import candidates_file_path, stage_file_path, stage_model_path
from raft_trainer.stages.prompts import stage_prompt_indices

SCRIPT = os.path.join(os.path.dirname(__file__), "multiprocess", "raft_two_processes.py")
NUM_PROMPTS, PROMPTS_PER_STAGE, NUM_GENERATIONS = 6, 5, 3


def launch_two_processes(
    output_dir: str, mode: str, config_file: str | None = None, succeeds: bool = True, fsdp_on_cpu: bool = False
) -> str:
    """Runs SCRIPT in `mode` under `accelerate launch` with 2 CPU processes; returns its stderr. With `fsdp_on_cpu`
    (and FSDP_CPU as `config_file`) accelerate is made to take the FSDP config on CPUs (see fsdp_on_cpu.py)."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is None:
        # `--multi_gpu` selects accelerate's torchrun launcher; with no GPU and `use_cpu=True` the processes join
        # over gloo (accelerate's `--cpu` launcher needs MPI for more than one process).
        command += ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    else:
        command += ["--config_file", config_file]
    command += ["--dynamo_backend", "no"]
    environment = {**os.environ, "FSDP_ON_CPU": "1" if fsdp_on_cpu else "0"}
    result = subprocess.run(
        [*command, SCRIPT, output_dir, mode], capture_output=True, text=True, timeout=600, env=environment
    )
    assert (result.returncode == 0) == succeeds, result.stderr[-3000:]
    return result.stderr


def read_stage(output_dir: str, stage: int) -> list[dict]:
    with open(stage_file_path(output_dir, stage)) as file:
        return [json.loads(line) for line in file]


@pytest.mark.parametrize("ranking", ["local", "global"])
def test_two_processes_split_the_stage_rank_it_whole_and_agree(tmp_path, ranking):
    output_dir = str(tmp_path / ranking)
    launch_two_processes(output_dir, ranking)

    drawn = PROMPTS_PER_STAGE * (NUM_GENERATIONS if ranking == "global" else 1)
    per_prompt = NUM_GENERATIONS if ranking == "local" else 1
    scored = [
        [json.loads(line) for line in open(os.path.join(output_dir, f"scored_rank{rank}.jsonl"))] for rank in (0, 1)
    ]
    for stage in range(2):
        rows = read_stage(output_dir, stage)
        # each process generated and scored its own share of the stage's prompts
        assert scored[0][stage] + scored[1][stage] == [row["prompt"] for row in rows]
        assert scored[0][stage] and scored[1][stage]
        # every drawn prompt once, in the stage's draw order, with all its candidates: none lost, none doubled
        expected = stage_prompt_indices(stage, drawn, NUM_PROMPTS, seed=0)
        assert [row["prompt_index"] for row in rows] == [i for i in expected for _ in range(per_prompt)]
        kept = [row for row in rows if row["selected"]]
        assert len(kept) == PROMPTS_PER_STAGE  # exactly b kept over both processes
        if ranking == "local":  # the best of each prompt's candidates, ranked together
            for start in range(0, len(rows), per_prompt):
                group = rows[start : start + per_prompt]
                assert sum(row["selected"] for row in group) == 1
                assert max(group, key=lambda row: row["reward"])["reward"] == next(
                    row["reward"] for row in group if row["selected"]
                )
        else:  # the top b of the pool gathered from both processes
            threshold = sorted((row["reward"] for row in rows), reverse=True)[PROMPTS_PER_STAGE - 1]
            assert all(row["reward"] >= threshold for row in kept)
    assert sorted(os.listdir(os.path.join(output_dir, "stages"))) == ["stage_000.jsonl", "stage_001.jsonl"]

    assert_same_weights(output_dir)
    # 5 kept samples shared by 2 processes (3 + 2) in batches of 2: 2 optimizer steps a stage on each process
    steps = {open(os.path.join(output_dir, f"steps_rank{rank}.txt")).read() for rank in (0, 1)}
    assert steps == {"4"}


def assert_same_weights(output_dir: str) -> None:
    weights = [torch.load(os.path.join(output_dir, f"weights_rank{rank}.pt"), weights_only=True) for rank in (0, 1)]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=0, msg=name)


def test_two_processes_rank_dataset_candidates_with_their_prompts_samples(tmp_path):
    # Groups of unequal size (K samples + 0 to 2 expert completions) spread over two processes: each drawn prompt is
    # one group, ranked whole, even when a stage draws a prompt twice.
    output_dir = str(tmp_path / "dataset")
    launch_two_processes(output_dir, "local+dataset")
    experts = {"say something": 1, "tell me": 2}
    for stage in range(2):
        rows = read_stage(output_dir, stage)
        drawn = stage_prompt_indices(stage, PROMPTS_PER_STAGE, NUM_PROMPTS, seed=0)
        groups = {}
        for row in rows:
            groups.setdefault(row["group"], []).append(row)
        assert sorted(groups) == list(range(PROMPTS_PER_STAGE))
        for place, group in groups.items():
            assert {row["prompt_index"] for row in group} == {drawn[place]}
            sources = [row["source"] for row in group]
            assert sources.count("model") == NUM_GENERATIONS
            assert sources.count("dataset") == experts.get(group[0]["prompt"], 0)
            kept = [row for row in group if row["selected"]]
            assert len(kept) == 1 and kept[0]["reward"] == max(row["reward"] for row in group)
    assert_same_weights(output_dir)


def test_two_processes_train_on_a_kept_set_of_one_sample(tmp_path):
    # One kept sample for two processes: both get batches (the kept set is cycled) instead of one of them waiting
    # forever in the gradient all-reduce; each process reads the reference log-probs of its share of the kept set.
    output_dir = str(tmp_path / "one_kept")
    launch_two_processes(output_dir, "one_kept")
    for stage in range(2):
        assert sum(row["selected"] for row in read_stage(output_dir, stage)) == 1
    assert_same_weights(output_dir)
    # 1 kept sample a stage, epochs_per_stage=1 x ceil(5 / (2 processes x batch 2)) = 2 steps a stage
    steps = {open(os.path.join(output_dir, f"steps_rank{rank}.txt")).read() for rank in (0, 1)}
    assert steps == {"4"}
    rows = [int(open(os.path.join(output_dir, f"reference_rows_rank{rank}.txt")).read()) for rank in (0, 1)]
    assert sorted(rows) == [0, 2]  # the one kept sample of each of the 2 stages, read once, not once a process


def test_phases_split_over_two_processes_write_their_files_once(tmp_path):
    output_dir = str(tmp_path / "phases")
    launch_two_processes(output_dir, "phases")
    drawn = stage_prompt_indices(0, PROMPTS_PER_STAGE, NUM_PROMPTS, seed=0)
    with open(candidates_file_path(output_dir, 0)) as file:
        candidates = [json.loads(line) for line in file]
    # generate: each drawn place once, in draw order, with its K candidates, from both processes' shares
    assert [row["group"] for row in candidates] == [place for place in range(5) for _ in range(NUM_GENERATIONS)]
    assert [row["prompt_index"] for row in candidates] == [i for i in drawn for _ in range(NUM_GENERATIONS)]
    # score: each process scored a contiguous share of the candidates (8 + 7), ranked whole
    scored = [
        [json.loads(line) for line in open(os.path.join(output_dir, f"scored_rank{rank}.jsonl"))] for rank in (0, 1)
    ]
    assert scored[0][0] + scored[1][0] == [row["prompt"] for row in candidates]
    assert [len(scored[rank][0]) for rank in (0, 1)] == [8, 7]
    rows = read_stage(output_dir, 0)
    for place in range(5):
        group = [row for row in rows if row["group"] == place]
        kept = [row for row in group if row["selected"]]
        assert len(kept) == 1 and kept[0]["reward"] == max(row["reward"] for row in group)
    # finetune: both processes trained on the kept set and agree; the main process saved the model
    assert_same_weights(output_dir)
    assert os.path.isfile(os.path.join(stage_model_path(output_dir, 0), "config.json"))


@pytest.mark.parametrize(
    ("name", "distributed_type", "zero_stage"),
    [("multi_gpu", "MULTI_GPU", None), ("deepspeed_zero2", "DEEPSPEED", 2), ("deepspeed_zero3", "DEEPSPEED", 3)]
    + [("fsdp", "FSDP", None)],
)
def test_shipped_accelerate_configs_load(name, distributed_type, zero_stage):
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "accelerate_configs", f"{name}.yaml")
    config = load_config_from_file(path)
    assert config.distributed_type == distributed_type
    assert (config.deepspeed_config or {}).get("zero_stage") == zero_stage


FSDP_CPU = os.path.join(os.path.dirname(__file__), "multiprocess", "fsdp_cpu.yaml")


ZERO3_CPU = os.path.join(os.path.dirname(__file__), "multiprocess", "deepspeed_zero3_cpu.yaml")


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
@pytest.mark.parametrize("mode", ["raft++", "lora"])
def test_raft_plus_plus_trains_sharded_as_under_ddp(tmp_path, mode, engine):
    # RAFT++ with a KL loss: the sharded policy (FSDP2's DTensors, or ZeRO-3's partitions, gathered for generation
    # by TRL's unwrap_model_for_generation) generates, reads its old log-probs, the reference its own (with LoRA:
    # the policy with its adapter off), trains.
    sharded_dir, ddp = str(tmp_path / engine), str(tmp_path / "ddp")
    if engine == "fsdp2":
        launch_two_processes(sharded_dir, mode, config_file=FSDP_CPU, fsdp_on_cpu=True)
    else:
        launch_two_processes(sharded_dir, mode, config_file=ZERO3_CPU)
    launch_two_processes(ddp, mode)
    for rank in (0, 1):  # every parameter of the wrapped policy is sharded, not replicated
        sharded, parameters = json.loads(open(os.path.join(sharded_dir, f"sharded_rank{rank}.json")).read())
        assert sharded == parameters > 0
    assert read_stage(sharded_dir, 0) == read_stage(ddp, 0)  # the same draw, samples and ranking before any update
    weights = [torch.load(os.path.join(sharded_dir, f"weights_rank{rank}.pt"), weights_only=True) for rank in (0, 1)]
    reference = torch.load(os.path.join(ddp, "weights_rank0.pt"), weights_only=True)
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    # sharded gradient sums may round differently from DDP's all-reduce, nothing more
    assert all(torch.allclose(weights[0][name], reference[name], atol=1e-5) for name in reference)
    assert int(open(os.path.join(sharded_dir, "steps_rank0.txt")).read()) > 0
    if mode == "lora":  # the adapter trained, and loads onto its base
        assert all(tensor.abs().max() > 0 for name, tensor in weights[0].items() if "lora_B" in name)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(sharded_dir, "base"))
        saved = PeftModel.from_pretrained(base, os.path.join(sharded_dir, "final"))
    else:
        saved = AutoModelForCausalLM.from_pretrained(os.path.join(sharded_dir, "final"))
    assert all(torch.equal(tensor, weights[0][name]) for name, tensor in saved.state_dict().items())


def test_the_phases_run_under_fsdp2_as_under_ddp(tmp_path):
    # Each phase loads one model: generate and score hold it whole on every process, the finetune phase's Trainer
    # shards it.
    fsdp, ddp = str(tmp_path / "fsdp"), str(tmp_path / "ddp")
    launch_two_processes(fsdp, "phases", config_file=FSDP_CPU, fsdp_on_cpu=True)
    launch_two_processes(ddp, "phases")
    for rank in (0, 1):
        sharded, parameters = json.loads(open(os.path.join(fsdp, f"sharded_rank{rank}.json")).read())
        assert sharded == parameters > 0
    for path in (candidates_file_path, stage_file_path):
        assert open(path(fsdp, 0), "rb").read() == open(path(ddp, 0), "rb").read()
    weights = [torch.load(os.path.join(fsdp, f"weights_rank{rank}.pt"), weights_only=True) for rank in (0, 1)]
    reference = torch.load(os.path.join(ddp, "weights_rank0.pt"), weights_only=True)
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert all(torch.allclose(weights[0][name], reference[name], atol=1e-5) for name in reference)
    saved = AutoModelForCausalLM.from_pretrained(stage_model_path(fsdp, 0))
    assert all(torch.equal(tensor, weights[0][name]) for name, tensor in saved.state_dict().items())


@pytest.mark.parametrize("mode", ["local", "phases"])
def test_an_fsdp_config_that_accelerate_drops_on_cpus_is_refused(tmp_path, mode):
    stderr = launch_two_processes(str(tmp_path), mode, config_file=FSDP_CPU, succeeds=False)
    assert "FSDP was asked for (accelerate config or TrainingArguments), but accelerate runs MULTI_CPU" in stderr
