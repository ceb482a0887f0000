import json
import math

import pytest
import torch

from raft_trainer.compare import CompareArguments, compare
from raft_trainer.compare import cli as compare_cli
from raft_trainer.compare.progress import CountingReward, RewardCurve, Stopwatch
from raft_trainer.compare.report import seed_summary
from raft_trainer.compare.run import best_learning_rate
from raft_trainer.tasks.toy.tiny import word_tokenizer

# A quick comparison on a small miniature world: 2 stages of b=4, K=4, i.e. 32 completions per method.
QUICK = [
    "--toy_num_pairs", "32", "--num_eval_prompts", "12", "--num_curve_prompts", "4",
    "--num_stages", "2", "--prompts_per_stage", "4", "--num_generations", "4", "--completions_per_update", "16",
    "--per_device_train_batch_size", "4", "--max_completion_length", "8", "--learning_rates", "1e-3",
    "--generation_batch_size", "64", "--quiet", "true",
]  # fmt: skip
QUICK_BUDGET = 2 * 4 * 4
ROW_FIELDS = {
    "final_reward", "true_score", "perplexity", "distinct_1", "distinct_2", "msttr_100", "length",
    "peak_memory_mb", "wall_seconds", "completions", "curve",
}  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_comparison(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("compare")
    results = compare_cli.run(["--output_dir", str(output_dir), "--cache_dir", str(output_dir / "cache"), *QUICK])
    return output_dir, results


@pytest.mark.ppo  # TRL's PPO: trl 1.0 to 1.12, the second pass of the README's test command
def test_every_method_gets_a_row_with_every_field(quick_comparison):
    output_dir, results = quick_comparison
    assert list(results["methods"]) == ["raft", "ppo", "grpo"]
    for name, row in results["methods"].items():
        assert ROW_FIELDS <= set(row), name
        for field in ROW_FIELDS - {"curve"}:
            assert isinstance(row[field], (int, float)) and math.isfinite(row[field]), (name, field)
        assert row["peak_memory_mb"] >= row["baseline_memory_mb"] > 0
        assert row["perplexity"] > 1 and row["wall_seconds"] > 0 and row["cpu_seconds"] > 0
    assert json.loads((output_dir / "results.json").read_text()) == results
    assert set(results["start"]) >= ROW_FIELDS - {"peak_memory_mb", "wall_seconds", "completions", "curve"}


@pytest.mark.ppo  # TRL's PPO: trl 1.0 to 1.12, the second pass of the README's test command
def test_every_method_generates_the_same_budget_and_is_followed_along_it(quick_comparison):
    _, results = quick_comparison
    for name, row in results["methods"].items():
        assert row["completions"] == QUICK_BUDGET, name  # counted as the completions were scored
        curve = row["curve"]
        assert [point["completions"] for point in curve] == [0, 16, 32], name  # at the start and after each stage
        assert all(later["seconds"] > earlier["seconds"] for earlier, later in zip(curve, curve[1:])), name
        assert curve[-1]["seconds"] <= row["wall_seconds"]
        assert {"reward", "true_score", "perplexity"} <= set(curve[0])
    # Every run starts from the same policy and is evaluated alike: the first curve points agree.
    starts = [row["curve"][0]["reward"] for row in results["methods"].values()]
    assert starts == pytest.approx([starts[0]] * len(starts))


def test_the_curve_can_be_read_every_few_stages_and_still_ends_at_the_budget(tmp_path):
    argv = [*QUICK, "--num_stages", "4", "--curve_every_stages", "2", "--methods", "raft", "grpo"]
    results = compare_cli.run([*argv, "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "c")])
    for name, row in results["methods"].items():
        assert [point["completions"] for point in row["curve"]] == [0, 32, 64], name  # every 2 stages of 16


@pytest.mark.ppo  # TRL's PPO: trl 1.0 to 1.12, the second pass of the README's test command
def test_the_table_and_the_plots_are_written(quick_comparison):
    output_dir, _ = quick_comparison
    table = (output_dir / "comparison.md").read_text()
    for row in ("| SFT (start) |", "| raft |", "| ppo |", "| grpo |"):
        assert row in table
    assert f"generated {QUICK_BUDGET} completions" in table
    for plot in ("reward_vs_samples.png", "reward_vs_time.png", "reward_vs_perplexity.png"):
        assert (output_dir / plot).read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(methods=["raft", "dpo"]), "methods"),
        (dict(completions_per_update=48), "completions_per_update"),  # does not divide b x K = 512
        (dict(completions_per_update=16, prompts_per_stage=8, num_generations=6), "completions_per_update"),  # K
        (dict(num_curve_prompts=200), "num_eval_prompts"),
        (dict(num_stages=3, curve_every_stages=2), r"curve_every_stages \(2\) must divide num_stages"),
        (dict(curve_every_stages=0), "curve_every_stages must be >= 1"),
        (dict(num_generations=1), "num_generations"),
        (dict(learning_rates=[]), "learning_rates"),
        (dict(ablation_values=[8, 16]), "ablation_values"),
        (dict(ablation="temperature", ablation_values=[0.0]), "ablation_values"),
        (dict(model_name_or_path="some/model"), "reward_model_name_or_path and dataset_name"),
        (dict(task="sudoku"), "task must be one of"),
        (dict(task="arithmetic", methods=["raft", "ppo"]), "leave ppo out"),
        (dict(task="arithmetic", dataset_name="some/data"), "leave out dataset_name"),
        (dict(kept_per_prompt=0), "kept_per_prompt"),
        (dict(raft_pp_samples_per_stage=0), "raft_pp_samples_per_stage must be >= 1"),
        (dict(task="arithmetic", num_eval_prompts=200), "num_eval_prompts must be at most 150"),
        (dict(task="arithmetic", wording="plain"), "wording must be one of"),
        (dict(task="arithmetic", level="word_problems"), "level must be 'sums' or 'two_digit'"),
        (dict(wording="words"), "need --task arithmetic"),
        (dict(sample_allocation="gvm"), "give --reward_threshold"),
        (dict(settled_prompt_weight=0.5), "settled_prompt_weight must be in"),
        (dict(dual_clip=1.0), "dual_clip must be > 1"),
        (dict(advantage_baseline="mean"), "advantage_baseline must be"),
        (dict(epsilon_high=-0.1), "epsilon_high must be >= 0"),
        (dict(entropy_coef=-0.01), "entropy_coef must be >= 0"),
        (dict(use_vllm=True, methods=["raft", "ppo"]), "PPO samples with transformers only"),
        (dict(vllm_gpu_memory_utilization=0.0), "vllm_gpu_memory_utilization must be in"),
    ],
)
def test_bad_settings_are_rejected_by_name_before_anything_is_loaded(tmp_path, overrides, named):
    with pytest.raises(ValueError, match=named):
        compare(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), **overrides)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_ppo_without_a_trl_that_has_it_is_refused_up_front_with_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl.experimental.ppo" else find_spec(name, *a)
    )
    with pytest.raises(ValueError, match=r'ppo needs TRL\'s PPO.*pip install "raft-trainer\[compare\]"'):
        compare(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), methods=["raft", "ppo"])
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.ppo  # a check of what PPO needs, made once PPO itself is there
def test_ppo_needs_a_reward_model_with_the_policys_tokenizer(tmp_path):
    word_tokenizer(["apple", "banana"]).save_pretrained(tmp_path / "policy")
    word_tokenizer(["cherry", "dog"]).save_pretrained(tmp_path / "reward")
    with pytest.raises(ValueError, match="reward_model_name_or_path"):
        compare(
            model_name_or_path=str(tmp_path / "policy"),
            reward_model_name_or_path=str(tmp_path / "reward"),
            dataset_name=str(tmp_path / "no-data"),
            output_dir=str(tmp_path / "out"),
        )


def test_ablations_run_raft_once_per_value_of_the_papers_tables():
    k, temperature, beta = (CompareArguments(ablation=name).runs() for name in ("K", "temperature", "beta"))
    assert [(label, method, s.num_generations) for label, method, s in k] == [
        ("raft-K8", "raft", 8),
        ("raft-K16", "raft", 16),
        ("raft-K32", "raft", 32),
    ]
    assert [s.completions_budget for _, _, s in k] == [8 * 64 * 8, 8 * 64 * 16, 8 * 64 * 32]  # b and stages fixed
    assert [(label, s.temperature) for label, _, s in temperature] == [
        ("raft-T0.7", 0.7),
        ("raft-T0.85", 0.85),
        ("raft-T1", 1.0),
    ]
    assert [s.beta for _, _, s in beta] == [0.0, 0.005, 0.01, 0.1]
    custom = CompareArguments(ablation="beta", ablation_values=[0.05]).runs()
    assert [(label, s.beta, s.methods) for label, _, s in custom] == [("raft-beta0.05", 0.05, ["raft"])]
    assert [label for label, _, _ in CompareArguments(methods=["raft", "rloo"]).runs()] == ["raft", "rloo"]


def test_reward_curve_points_leave_out_evaluation_time_and_randomness():
    now = [0.0]
    stopwatch = Stopwatch(clock=lambda: now[0], cpu_clock=lambda: 2 * now[0])
    counter = CountingReward(lambda completions, **kwargs: [1.0] * len(completions))

    def evaluate(model):
        now[0] += 100.0  # evaluating takes long, and draws random numbers
        return {"reward": torch.rand(1).item()}

    curve = RewardCurve(evaluate, every=8, stopwatch=stopwatch)
    curve.attach(counter, policy=lambda: None)
    torch.manual_seed(0)
    curve.on_train_begin(None, None, None)
    for _ in range(3):  # three updates of 4 completions, 1 second each
        now[0] += 1.0
        counter(completions=["a"] * 4)
        curve.on_step_end(None, None, None)
    assert [(p["completions"], p["seconds"]) for p in curve.points] == [(0, 0.0), (8, 2.0)]
    assert (stopwatch.seconds(), stopwatch.cpu_seconds()) == (3.0, 6.0)
    assert torch.rand(1).item() == pytest.approx(curve.points[0]["reward"])  # the run's random stream is untouched


def test_the_learning_rate_is_chosen_on_validation_reward_and_a_diverged_run_never_wins():
    def row(learning_rate, validation, final):
        curve = [{"completions": 0, "seconds": 0.0, "reward": 0.0}, {"reward": validation}]
        measured = {"final_reward": final, "true_score": None, "perplexity": 2.0, "wall_seconds": 1.0}
        return {"learning_rate": learning_rate, "curve": curve, **measured}

    best = best_learning_rate([row(1e-4, 0.5, 9.0), row(1e-3, 0.7, 0.1), row(1e-2, float("nan"), 10.0)])
    assert best["learning_rate"] == 1e-3  # not the one with the best test reward
    assert [entry["learning_rate"] for entry in best["learning_rate_search"]] == [1e-4, 1e-3, 1e-2]


def test_a_method_that_fails_is_reported_with_its_error_and_the_others_are_kept():
    from raft_trainer.compare.report import comparison_markdown

    def row(validation):
        curve = [{"completions": 0, "seconds": 0.0, "reward": 0.0}, {"completions": 8, "reward": validation}]
        measured = {"final_reward": validation, "true_score": None, "perplexity": 2.0, "wall_seconds": 1.0}
        return {"learning_rate": 1e-3, "curve": curve, "peak_memory_mb": 100.0, "cpu_seconds": 1.0, **measured}

    error = "ValueError: The sum of the mask is zero"
    ppo = best_learning_rate([{"learning_rate": 1e-4, "failed": error}, {"learning_rate": 1e-3, "failed": error}])
    raft = best_learning_rate([{"learning_rate": 1e-4, "failed": "RuntimeError: diverged"}, row(0.7)])
    assert ppo["failed"] == error and raft["learning_rate"] == 1e-3 and "failed" not in raft
    assert raft["learning_rate_search"][0] == {"learning_rate": 1e-4, "failed": "RuntimeError: diverged"}
    results = {
        "methods": {"raft": raft, "ppo": ppo},
        "start": {"final_reward": 0.0},
        "budget": {
            "completions": [8],
            "max_completion_length": 16,
            "learning_rates": [1e-4, 1e-3],
            "curve_prompts": 4,
            "test_prompts": 4,
            "memory": "process peak resident set",
            "device": "cpu",
        },
        "ablation": None,
    }
    text = comparison_markdown(results)
    assert "| raft |" in text and "| ppo |" not in text
    assert f"**ppo failed** at every learning rate: {error}" in text


def test_seed_summary_gives_mean_and_range(tmp_path):
    def results(reward):
        row = {"final_reward": reward, "true_score": None, "completions": 64, "wall_seconds": 2.0}
        return {"methods": {"raft": row}, "start": {"final_reward": 0.0}}

    for seed, reward in enumerate((1.0, 2.0, 4.0)):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "results.json").write_text(json.dumps(results(reward)))
    text = seed_summary([results(1.0), results(2.0), results(4.0)])
    assert "| raft | 2.333 [1.000, 4.000] | – |" in text
    summary = compare_cli.run(
        ["--summarize", *(str(tmp_path / f"seed{s}") for s in range(3)), "--output_dir", str(tmp_path)]
    )
    assert summary["summary"] == text == (tmp_path / "summary.md").read_text()


def test_the_example_script_is_raft_compare():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "llm" / "compare_ppo.py"
    spec = importlib.util.spec_from_file_location("compare_ppo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports only: the comparison runs under `if __name__ == "__main__"`
    assert module.main is compare_cli.main


# The verifiable task on the real model, at a tiny budget: 1 stage of 8 prompts x 4 = 32 completions per method.
ARITHMETIC = [
    "--task", "arithmetic", "--num_stages", "1", "--prompts_per_stage", "8", "--num_generations", "4",
    "--completions_per_update", "16", "--per_device_train_batch_size", "4", "--max_completion_length", "16",
    "--samples_per_stage", "4", "--num_eval_prompts", "12", "--num_curve_prompts", "4", "--quiet", "true",
    "--learning_rates", "1e-5",
]  # fmt: skip
# RAFT++ and Reinforce-Rej are RAFT's code path with another loss, RLOO is GRPO's (the miniature world runs both).
SOME_OF_THEM = ["raft++", "reinforce_rej", "rloo"]


def stage_rows(output_dir, method: str) -> list[dict]:
    path = output_dir / "runs" / method / "lr1e-05" / "stages" / "stage_000.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_verifiable_task_compares_the_raft_family_with_grpo_and_rloo_by_default():
    args = compare_cli.parse_args(["--task", "arithmetic"])
    assert args.methods == ["raft", "raft++", "reinforce_rej", "grpo", "rloo"]
    assert args.completions_budget == 768 and args.reward_threshold == 1.0
    assert not args.mask_truncated_completions  # the baselines as users get them: TRL's default
    assert CompareArguments(task="arithmetic").methods == ["raft", "ppo", "grpo"]  # the dataclass stays plain...
    with pytest.raises(ValueError, match="leave ppo out"):
        compare(task="arithmetic", methods=["raft", "ppo"])  # ...and compare(task=...) starts from the task's


def test_the_verifiable_task_asks_the_level_and_wording_given():
    from raft_trainer.compare.task import verifiable_task
    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    args = compare_cli.parse_args(["--task", "arithmetic", "--level", "two_digit", "--wording", "imperative"])
    args.model_name_or_path = "some/policy"  # not loaded here
    task = verifiable_task(args)
    expected = arithmetic_dataset("two_digit", num_train=250, num_test=150, wording="imperative")
    assert list(task.train_prompts["prompt"]) == list(expected["train"]["prompt"])
    assert list(task.curve_prompts["prompt"]) + list(task.test_prompts["prompt"]) == list(expected["test"]["prompt"])
    assert task.test_prompts[0]["prompt"][0]["content"].startswith("Compute ")


def test_the_raft_family_against_grpo_and_rloo_on_the_verifiable_task(smollm2_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raft_trainer.tasks.accuracy import evaluate_accuracy
    from raft_trainer.tasks.arithmetic import arithmetic_dataset

    output_dir = tmp_path / "out"
    argv = [*ARITHMETIC, "--model_name_or_path", smollm2_path, "--output_dir", str(output_dir)]
    results = compare_cli.run([*argv, "--methods", *SOME_OF_THEM])
    assert list(results["methods"]) == SOME_OF_THEM
    for name, row in results["methods"].items():
        assert "failed" not in row, (name, row.get("failed"))
        assert row["completions"] == 32, name
        assert [point["completions"] for point in row["curve"]] == [0, 32], name
        for key in ("final_reward", "greedy_reward"):  # accuracies on the 8 test problems: multiples of 1/8
            assert row[key] * 8 == pytest.approx(round(row[key] * 8)), (name, key)
        assert row["peak_memory_mb"] > row["baseline_memory_mb"] > 0
        assert row["memory_over_baseline_mb"] == row["peak_memory_mb"] - row["baseline_memory_mb"]
        assert any("loss" in key for record in row["training_log"] for key in record), name  # the trainer's log
    for name in ("raft++", "reinforce_rej"):  # what shows why a policy-gradient member trails: entropy, ratio, clips
        logged = {key for record in results["methods"][name]["training_log"] for key in record}
        assert {"entropy", "ratio_mean", "clip_fraction"} <= logged, (name, logged)

    # The start's greedy reward is the greedy accuracy as evaluate_accuracy measures it, on the same problems.
    test_problems = arithmetic_dataset("sums", num_train=250, num_test=12)["test"].select(range(4, 12))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(smollm2_path), AutoTokenizer.from_pretrained(smollm2_path)
    expected = evaluate_accuracy(model, tokenizer, test_problems, num_samples=1, max_new_tokens=16)
    assert results["start"]["greedy_reward"] == expected["greedy_accuracy"]

    # Each kept what it should: RAFT++ the correct answers not cut off; Reinforce-Rej every candidate not cut off of
    # the prompts whose answers (not cut off) were neither all right nor all wrong.
    kept = [row for row in stage_rows(output_dir, "raft++") if row["selected"]]
    assert kept and all(row["reward"] == 1.0 and not row["truncated"] for row in kept)
    assert "old_log_probs" in stage_rows(output_dir, "raft++")[0]  # the clipped loss's pi_old
    groups = {}
    for row in stage_rows(output_dir, "reinforce_rej"):
        groups.setdefault(row["group"], []).append(row)
    for rows in groups.values():
        finished = [row for row in rows if not row["truncated"]]
        mixed = len({row["reward"] for row in finished}) > 1
        assert all(row["selected"] == (mixed and not row["truncated"]) for row in rows)
    assert any(row["selected"] for rows in groups.values() for row in rows)

    table = (output_dir / "comparison.md").read_text()
    assert "every reward below is an accuracy" in table and "| greedy reward |" in table
    assert "| over the start (MB) |" in table
    for name in SOME_OF_THEM:
        assert f"| {name} |" in table


def test_a_run_in_its_own_process_ends_when_the_comparison_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    # A parent that starts a run (here: one that writes its pid, then sleeps), as compare() does.
    script = (
        "import os, sys, time\n"
        "from raft_trainer.compare.worker import run_in_own_process\n"
        "def run(path):\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    run_in_own_process(run, sys.argv[1])\n"
    )
    (tmp_path / "parent.py").write_text(script)
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(pid_file)])
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)  # what a scheduler or `kill -9` does: no handler runs in the parent
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the run went on after its parent was killed")


def test_a_curve_point_is_never_later_than_the_run_that_ends_right_after_it():
    # Four readings of the clock after the start, with 4 s between the second and the third (entering the
    # evaluation's context takes time): the point's time must be read before the pause begins, or that moment
    # counts for the point and is taken off the run.
    readings = iter([0.0, 1.0, 5.0, 6.0, 6.001])
    stopwatch = Stopwatch(clock=lambda: next(readings), cpu_clock=lambda: 0.0)
    counter = CountingReward(lambda completions, **kwargs: [1.0] * len(completions))
    curve = RewardCurve(lambda model: {"reward": 0.0}, every=1, stopwatch=stopwatch)
    curve.attach(counter, policy=lambda: None)
    counter(completions=["a"])
    curve.on_step_end(None, None, None)
    assert curve.points[-1]["seconds"] <= stopwatch.seconds()


def configs_built(monkeypatch, tmp_path, argv: list[str], method_names) -> dict:
    """The config each method's trainer is built with from the `raft-compare` flags `argv` (nothing is trained)."""
    from types import SimpleNamespace

    import trl

    from raft_trainer.compare import methods
    from raft_trainer.compare.methods import Run

    class Built(Exception):
        pass

    def capture(*args, **kwargs):
        raise Built(kwargs.get("args") or args[2])

    monkeypatch.setattr(methods, "RAFTTrainer", capture)
    monkeypatch.setattr(methods, "AutoModelForCausalLM", SimpleNamespace(from_pretrained=lambda name: None))
    for name in ("GRPOTrainer", "RLOOTrainer"):
        monkeypatch.setattr(trl, name, capture)
    settings = compare_cli.parse_args(argv)
    task = SimpleNamespace(policy="some/policy", train_prompts=None)
    built_args = {}
    for method in method_names:
        with pytest.raises(Built) as built:
            methods.TRAINERS[method](Run(method, method, 1e-5, settings, task, str(tmp_path)), None, None, None)
        built_args[method] = built.value.args[0]
    return built_args


def test_the_raft_family_gets_the_sample_allocation_and_curriculum_asked(monkeypatch, tmp_path):
    argv = [
        "--task",
        "arithmetic",
        "--sample_allocation",
        "gvm",
        "--settled_prompt_weight",
        "0.25",
        "--dual_clip",
        "3",
        "--advantage_baseline",
        "group_mean",
        "--epsilon_high",
        "0.28",
        "--entropy_coef",
        "0.01",
    ]
    built_args = configs_built(monkeypatch, tmp_path, argv, ("raft", "raft++", "reinforce_rej"))
    args = built_args["raft"]
    assert args.sample_allocation == "gvm" and args.reward_threshold == 1.0 and args.gvm_first_draw == 4
    assert args.settled_prompt_weight == 0.25
    assert args.dual_clip is None and built_args["reinforce_rej"].dual_clip == 3.0  # RAFT's SFT loss has no ratio
    assert args.advantage_baseline == "none" and built_args["reinforce_rej"].advantage_baseline == "group_mean"
    for clipped in ("raft++", "reinforce_rej"):  # the clip bound and the entropy bonus shape the clipped losses only
        assert (built_args[clipped].epsilon_high, built_args[clipped].entropy_coef) == (0.28, 0.01)
    assert (args.epsilon_high, args.entropy_coef) == (None, 0.0)


def test_the_verifiable_tasks_raft_pp_takes_two_steps_a_stage_and_raft_one(monkeypatch, tmp_path):
    # The task's defaults are the measured recipe: GRPO-sized stages, RAFT one optimizer step of 8 a stage, RAFT++
    # two (its clip acts on the off-policy second), Reinforce-Rej half the stage's 32 candidates.
    methods = ("raft", "raft++", "reinforce_rej")
    built_args = configs_built(monkeypatch, tmp_path, ["--task", "arithmetic"], methods)
    assert {method: built_args[method].samples_per_stage for method in methods} == {
        "raft": 8,
        "raft++": 16,
        "reinforce_rej": 16,
    }
    assert {(args.num_stages, args.prompts_per_stage, args.num_generations) for args in built_args.values()} == {
        (24, 4, 8)
    }
    argv = ["--task", "arithmetic", "--samples_per_stage", "24", "--raft_pp_samples_per_stage", "32"]
    built_args = configs_built(monkeypatch, tmp_path, argv, ("raft", "raft++"))
    assert (built_args["raft"].samples_per_stage, built_args["raft++"].samples_per_stage) == (24, 32)
    plain = configs_built(monkeypatch, tmp_path, ["--samples_per_stage", "24"], ("raft", "raft++"))
    assert plain["raft"].samples_per_stage == plain["raft++"].samples_per_stage == 24  # unset: RAFT's value


def test_under_the_task_the_raft_family_keeps_no_truncated_answer_and_grpo_trains_on_them(monkeypatch, tmp_path):
    # GRPO and RLOO as TRL ships them (no mask); the RAFT family's selection leaves truncated answers out.
    names = ("raft", "raft++", "reinforce_rej", "grpo", "rloo")
    built = configs_built(monkeypatch, tmp_path, ["--task", "arithmetic"], names)
    assert {name: args.mask_truncated_completions for name, args in built.items()} == {
        "raft": True, "raft++": True, "reinforce_rej": True, "grpo": False, "rloo": False
    }  # fmt: skip
    argv = ["--task", "arithmetic", "--raft_mask_truncated_completions", "false"]
    assert not any(
        args.mask_truncated_completions for args in configs_built(monkeypatch, tmp_path, argv, names).values()
    )
    # Unset, the family follows --mask_truncated_completions, as every method does.
    for mask in ("true", "false"):
        argv = ["--mask_truncated_completions", mask]
        masks = {
            args.mask_truncated_completions for args in configs_built(monkeypatch, tmp_path, argv, names).values()
        }
        assert masks == {mask == "true"}


def test_a_stage_of_the_raft_family_that_keeps_nothing_never_stops_a_comparison(monkeypatch, tmp_path):
    # At 4 prompts a stage, a stage with no right answer (or, for Reinforce-Rej, no prompt with contrast) is
    # ordinary; GRPO steps through such a batch, so the family passes over it however many come in a row.
    argv = ["--task", "arithmetic", "--num_stages", "24", "--prompts_per_stage", "4"]
    for method, args in configs_built(monkeypatch, tmp_path, argv, ("raft", "raft++", "reinforce_rej")).items():
        assert args.max_empty_stages > 24, method


def test_use_vllm_is_refused_up_front_where_vllm_or_a_gpu_is_missing(tmp_path, monkeypatch):
    import importlib

    import torch

    import_utils = importlib.import_module("trl.import_utils")  # trl's lazy module does not list it as an attribute
    for vllm_installed, gpu in ((False, True), (True, False)):
        monkeypatch.setattr(import_utils, "is_vllm_available", lambda installed=vllm_installed: installed)
        monkeypatch.setattr(torch.cuda, "is_available", lambda visible=gpu: visible)
        with pytest.raises(ValueError, match="pip install vllm" if not vllm_installed else "none is visible"):
            compare(task="arithmetic", use_vllm=True, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))
        assert not (tmp_path / "out").exists()


def test_use_vllm_samples_with_vllm_in_every_method_alike(monkeypatch, tmp_path):
    everyone = ("raft", "raft++", "reinforce_rej", "grpo", "rloo")
    argv = ["--task", "arithmetic", "--use_vllm", "--vllm_gpu_memory_utilization", "0.5"]
    for method, args in configs_built(monkeypatch, tmp_path, argv, everyone).items():
        assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.5), method
    assert configs_built(monkeypatch, tmp_path, ["--task", "arithmetic"], ["grpo"])["grpo"].use_vllm is False


def test_equal_wall_time_reads_each_curve_at_grpos_end():
    from raft_trainer.compare.report import equal_time_lines

    def curve(*points):
        return {"curve": [{"completions": 32 * i, "seconds": s, "reward": r} for i, (s, r) in enumerate(points)]}

    methods = {
        "raft": curve((0, 0.1), (20, 0.3), (40, 0.6), (60, 0.7), (200, 0.9)),  # passes GRPO's 0.6 at 40 s of 100
        "rloo": curve((0, 0.1), (80, 0.4), (150, 0.5)),  # never reaches it
        "grpo": curve((0, 0.1), (50, 0.4), (100, 0.6)),
    }
    raft, rloo = equal_time_lines(methods)
    assert raft == (
        "raft at GRPO's training time (100 s): validation reward 0.700 after 96 completions; reached GRPO's final "
        "0.600 at 40 s (x0.40 of its time)"
    )
    assert rloo == (
        "rloo at GRPO's training time (100 s): validation reward 0.400 after 32 completions; never reached GRPO's "
        "final 0.600"
    )
    assert equal_time_lines({"raft": methods["raft"]}) == []  # no GRPO in the comparison: nothing to read
    late = {"grpo": curve((0.0, 0.1), (0.5, 0.2)), "ppo": curve((0.8, 0.1), (2.0, 0.3))}  # starts after GRPO's end
    assert equal_time_lines(late) == [
        "ppo at GRPO's training time (0 s): no curve point yet; reached GRPO's final 0.200 at 2 s (x4.00 of its time)"
    ]
