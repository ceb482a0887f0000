import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from raft_trainer import cli

from .helpers import PlantedCrash

TABLE_3 = {"reward", "perplexity", "msttr_100", "distinct_1", "distinct_2", "unique_1", "unique_2", "length"}
SMALL_RUN = [
    "--toy_num_pairs",
    "64",
    "--num_eval_prompts",
    "8",
    "--num_stages",
    "2",
    "--prompts_per_stage",
    "8",
    "--num_generations",
    "4",
    "--max_completion_length",
    "12",
    "--disable_tqdm",
    "true",
]


def test_raft_train_runs_the_miniature_world_and_writes_its_report(tmp_path):
    out = tmp_path / "run"
    raft_train = Path(sys.executable).parent / "raft-train"  # the installed console script
    command = [str(raft_train), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SMALL_RUN]
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert [stage["stage"] for stage in summary["stages"]] == [0, 1]
    for stage in summary["stages"]:
        assert {"reward_mean", "reward_kept_mean", "reward_std", "loss", "kept_distinct_1"} <= set(stage)
    for moment in ("before", "after"):
        assert set(summary["eval"][moment]) == TABLE_3 | {"true_score"}
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["stage_000.jsonl", "stage_001.jsonl"]
    AutoModelForCausalLM.from_pretrained(out)
    assert "stage   reward     kept" in finished.stdout and "true_score" in finished.stdout
    # The stage table and the evaluation, nothing else: no raw log dicts, no dependency reports or bars.
    assert "{'" not in finished.stdout
    for noise in (
        "LOAD REPORT",
        "Loading weights",
        "Writing model shards",
        "Tokenizing",
        "Dropping fully masked",
        "Warning",
    ):
        assert noise not in finished.stdout + finished.stderr, noise
    table = [line for line in finished.stdout.splitlines() if line.startswith("stage")]
    assert len(table) == 1 and "eval" in table[0]  # one header, with the held-out reward after each stage


def test_run_returns_the_summary_it_writes(tmp_path):
    out = tmp_path / "run"
    summary = cli.run(["--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SMALL_RUN])
    assert json.loads((out / "summary.json").read_text())["eval"] == summary["eval"]


def test_yaml_config_with_flags_overriding_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("num_stages: 5\nbeta: 0.05\nlearning_rate: 0.001\n")
    script_args, args = cli.parse_args(["--config", str(config), "--num_stages", "3"])
    assert (args.num_stages, args.beta, args.learning_rate) == (3, 0.05, 0.001)
    assert script_args.model_name_or_path is None and args.output_dir == "runs/raft-toy"


@pytest.mark.parametrize("model", [[], ["--model_name_or_path", "some/model"]], ids=["toy", "model"])
def test_a_whole_run_evaluates_every_stage_unless_eval_strategy_says_no(model):
    assert cli.parse_args(model)[1].eval_strategy == "epoch"
    assert cli.parse_args([*model, "--eval_strategy", "no"])[1].eval_strategy == "no"
    assert cli.parse_args([*model, "--eval_strategy", "steps", "--eval_steps", "3"])[1].eval_strategy == "steps"


def test_real_models_need_a_reward_model_and_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="--reward_model_name_or_path and --dataset_name"):
        cli.run(["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path)])


def test_toy_defaults_apply_only_without_a_model(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: some/model\n")
    script_args, args = cli.parse_args(["--config", str(config)])
    assert script_args.model_name_or_path == "some/model"
    assert (args.output_dir, args.num_stages, args.learning_rate) == ("runs/raft", 4, 2e-5)  # RAFTConfig's own


@pytest.mark.parametrize("with_expert_completions", [False, True])
def test_raft_train_on_local_models_and_a_local_dataset(tmp_path, local_files, with_expert_completions):
    policy, reward, data, prompts = local_files
    (data / "train.jsonl").write_text("\n".join(json.dumps({"prompt": p, "chosen": " dog"}) for p in prompts * 3))
    (data / "test.jsonl").write_text("\n".join(json.dumps({"prompt": p, "chosen": " apple"}) for p in prompts))
    expert_flags = []
    if with_expert_completions:
        experts = tmp_path / "experts"
        experts.mkdir()
        (experts / "train.jsonl").write_text(
            "\n".join(json.dumps({"prompt": p, "completion": "apple dog"}) for p in prompts[:2])
        )
        expert_flags = ["--candidate_dataset_name", str(experts), "--candidate_source", "both"]
    summary = cli.run(
        [
            *expert_flags,
            "--model_name_or_path",
            policy,
            "--reward_model_name_or_path",
            reward,
            "--dataset_name",
            str(data),
            "--output_dir",
            str(tmp_path / "run"),
            "--num_stages",
            "1",
            "--prompts_per_stage",
            "4",
            "--num_generations",
            "2",
            "--max_completion_length",
            "6",
            "--per_device_train_batch_size",
            "4",
            "--disable_tqdm",
            "true",
            "--save_strategy",
            "no",
        ]
    )
    assert set(summary["eval"]["after"]) == TABLE_3  # no ground truth outside the miniature world
    assert (tmp_path / "run" / "summary.json").exists()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "stages" / "stage_000.jsonl")]
    from_dataset = [row for row in rows if row.get("source") == "dataset"]
    assert len(rows) == 4 * 2 + len(from_dataset)
    assert bool(from_dataset) == with_expert_completions
    if with_expert_completions:  # one expert completion for each draw of the first two prompts
        drawn = [row["prompt"] for row in rows if row["source"] == "model"][::2]
        assert [row["prompt"] for row in from_dataset] == [p for p in drawn if p in prompts[:2]]
        assert {row["completion"] for row in from_dataset} == {"apple dog"}


def test_the_language_model_path_starts_without_the_diffusion_stack():
    code = (
        "import sys, raft_trainer, raft_trainer.cli, raft_trainer.rewards\n"
        "print('diffusers' in sys.modules, 'open_clip' in sys.modules)\n"
        "from raft_trainer import DiffusionRAFTTrainer\n"
        "from raft_trainer.rewards import AestheticScorer, CLIPScore\n"
        "print('diffusers' in sys.modules, 'open_clip' in sys.modules, DiffusionRAFTTrainer.__name__)"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.split("\n")[:2] == ["False False", "True True DiffusionRAFTTrainer"]


def test_raft_train_resume_goes_on_from_the_crashed_stage(tmp_path, local_files, monkeypatch):
    from raft_trainer.raft_trainer import RAFTTrainer
    from raft_trainer.stage_trainer import StageTrainer

    policy, reward, data, prompts = local_files
    (data / "train.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in prompts * 2))
    (data / "test.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in prompts[:2]))
    output_dir = tmp_path / "run"
    argv = ["--model_name_or_path", policy, "--reward_model_name_or_path", reward, "--dataset_name", str(data)]
    argv += ["--output_dir", str(output_dir), "--num_stages", "2", "--prompts_per_stage", "4"]
    argv += ["--num_generations", "2", "--max_completion_length", "6", "--per_device_train_batch_size", "2"]
    argv += ["--disable_tqdm", "true", "--save_strategy", "epoch"]
    generated, scored = [], []
    generate, score = RAFTTrainer.generate, StageTrainer.score

    def counting_generate(self, *args):
        generated.append(self.current_stage())
        return generate(self, *args)

    def crashing_score(self, candidates, columns):
        if "group" in candidates:  # a stage's candidates, not the held-out evaluation's
            scored.append(self.current_stage())
            if len(scored) == 2:
                raise PlantedCrash("planted crash while scoring stage 1")
        return score(self, candidates, columns)

    monkeypatch.setattr(RAFTTrainer, "generate", counting_generate)
    monkeypatch.setattr(StageTrainer, "score", crashing_score)
    with pytest.raises(PlantedCrash):
        cli.run(argv)
    assert generated == [0, 1] and not (output_dir / "summary.json").exists()

    summary = cli.run([*argv, "--resume"])
    assert generated == [0, 1]  # stage 1's candidates came back from disk
    assert scored == [0, 1, 1]
    assert [stage["stage"] for stage in summary["stages"]] == [0, 1]
    assert sorted(p.name for p in (output_dir / "stages").iterdir()) == ["stage_000.jsonl", "stage_001.jsonl"]
    assert not (output_dir / "in_flight").exists()


@pytest.mark.parametrize("quiet", [False, True])
def test_the_quiet_console_hides_deepspeeds_accelerator_notice(quiet):
    # Installed (the suite trains under ZeRO-3), DeepSpeed announces on a CPU machine, at WARNING, that it falls back
    # to the CPU, whenever the Trainer imports it: raft-train's console does not show that.
    script = (
        "from raft_trainer.reporting.console import quiet_dependencies\n"
        f"{'quiet_dependencies()' if quiet else ''}\n"
        "from deepspeed.accelerator import get_accelerator\n"
        "get_accelerator()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("Setting accelerator to CPU" in result.stdout + result.stderr) is not quiet
