import re
import sys

from transformers import AutoModelForCausalLM

from .helpers import load_example


def test_quickstart_runs_and_its_reward_rises(tmp_path):
    quickstart = load_example("llm/quickstart.py")
    stages = quickstart.main(["--output_dir", str(tmp_path), "--disable_tqdm", "true"])
    assert len(stages) == 4
    assert stages[-1]["reward_mean"] > 2 * stages[0]["reward_mean"]
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == [f"stage_00{t}.jsonl" for t in range(4)]
    AutoModelForCausalLM.from_pretrained(tmp_path)


def arithmetic_flags(tmp_path, tokenizer) -> dict:
    """The arithmetic example's flags for a tiny chat model saved in `tmp_path`, a run of seconds."""
    from raft_trainer.tasks.toy.tiny import tiny_causal_lm

    from .helpers import CHAT_TEMPLATE

    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_causal_lm(tokenizer, n_positions=256).save_pretrained(tmp_path / "tiny-chat")
    tokenizer.save_pretrained(tmp_path / "tiny-chat")
    return {
        "model_name_or_path": tmp_path / "tiny-chat",
        "output_dir": tmp_path / "out",
        "num_train_prompts": 8,
        "num_stage_eval_prompts": 4,
        "num_eval_samples": 1,
        "num_stages": 2,
        "prompts_per_stage": 4,
        "num_generations": 2,
        "max_completion_length": 4,
        "best_of_k": "true",  # a random model is never right: best of K keeps something
        "disable_tqdm": "true",
        "verbose": "true",
    }


def as_argv(flags: dict) -> list[str]:
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def test_the_arithmetic_example_runs_end_to_end_and_writes_its_report(tmp_path, tokenizer):
    # The real model is measured in BENCHMARKS.md; here a tiny chat model runs every step of the script.
    example = load_example("llm/raft_arithmetic.py")
    summary = example.main(as_argv(arithmetic_flags(tmp_path, tokenizer)))
    assert set(summary["before"]) == set(summary["after"]) >= {"greedy_accuracy", "sampled_accuracy", "pass@1"}
    assert [stage["stage"] for stage in summary["stages"]] == [0, 1]
    assert all("eval_reward" in stage for stage in summary["stages"])
    assert 0 <= summary["start_eval_reward"] <= 1  # the curve's first point: the stage evaluation before training
    out = tmp_path / "out"
    assert (out / "accuracy_per_stage.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(path.name for path in (out / "stages").iterdir()) == ["stage_000.jsonl", "stage_001.jsonl"]
    AutoModelForCausalLM.from_pretrained(out)


def test_the_arithmetic_examples_console_shows_every_stage_line(tmp_path, tokenizer, monkeypatch, capsys):
    # As on a console: progress bars on (the example's default) and on the same stream as the stage table. A plain
    # print lands after a bar's text, where the bar's next redraw writes over it.
    monkeypatch.setattr(sys, "stderr", sys.stdout)
    flags = {**arithmetic_flags(tmp_path, tokenizer), "disable_tqdm": "false", "verbose": "false", "num_stages": 3}
    load_example("llm/raft_arithmetic.py").main(as_argv(flags))
    shown = [line.split("\r")[-1] for line in capsys.readouterr().out.split("\n")]  # what a terminal keeps
    assert any(line.startswith("stage   reward") for line in shown)
    for stage in range(3):
        assert any(re.match(rf"\s+{stage}\s+-?\d", line) for line in shown), f"stage {stage}: {shown}"
