from transformers import AutoModelForCausalLM

from .helpers import load_example


def test_quickstart_runs_and_its_reward_rises(tmp_path):
    quickstart = load_example("llm/quickstart.py")
    stages = quickstart.main(["--output_dir", str(tmp_path), "--disable_tqdm", "true"])
    assert len(stages) == 4
    assert stages[-1]["reward_mean"] > 2 * stages[0]["reward_mean"]
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == [f"stage_00{t}.jsonl" for t in range(4)]
    AutoModelForCausalLM.from_pretrained(tmp_path)
