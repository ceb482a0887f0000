from transformers import AutoModelForCausalLM

from .helpers import load_example


def test_quickstart_runs_and_its_reward_rises(tmp_path):
    quickstart = load_example("llm/quickstart.py")
    stages = quickstart.main(["--output_dir", str(tmp_path), "--disable_tqdm", "true"])
    assert len(stages) == 4
    assert stages[-1]["reward_mean"] > 2 * stages[0]["reward_mean"]
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == [f"stage_00{t}.jsonl" for t in range(4)]
    AutoModelForCausalLM.from_pretrained(tmp_path)


def test_the_arithmetic_example_runs_end_to_end_and_writes_its_report(tmp_path, tokenizer):
    # The real model is measured in BENCHMARKS.md; here a tiny chat model runs every step of the script.
    from raft_trainer.tasks.toy.tiny import tiny_causal_lm

    from .helpers import CHAT_TEMPLATE

    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_causal_lm(tokenizer, n_positions=256).save_pretrained(tmp_path / "tiny-chat")
    tokenizer.save_pretrained(tmp_path / "tiny-chat")
    example = load_example("llm/raft_arithmetic.py")
    flags = {
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
    summary = example.main([item for name, value in flags.items() for item in (f"--{name}", str(value))])
    assert set(summary["before"]) == set(summary["after"]) >= {"greedy_accuracy", "sampled_accuracy", "pass@1"}
    assert [stage["stage"] for stage in summary["stages"]] == [0, 1]
    assert all("eval_reward" in stage for stage in summary["stages"])
    out = tmp_path / "out"
    assert (out / "accuracy_per_stage.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(path.name for path in (out / "stages").iterdir()) == ["stage_000.jsonl", "stage_001.jsonl"]
    AutoModelForCausalLM.from_pretrained(out)
