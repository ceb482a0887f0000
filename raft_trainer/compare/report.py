"""The comparison's outputs: `results.json`, `comparison.md` (the paper's Table 3) and the reward plots."""

import os
import statistics

from ..files import atomic_path, write_json, write_text

# (results key, column title, format) of the table, as in the paper's Table 3 plus cost.
COLUMNS = (
    ("final_reward", "reward", "{:.3f}"),
    ("greedy_reward", "greedy reward", "{:.3f}"),
    ("true_score", "true score", "{:.3f}"),
    ("perplexity", "perplexity", "{:.3f}"),
    ("msttr_100", "MSTTR-100", "{:.3f}"),
    ("distinct_1", "Distinct-1", "{:.3f}"),
    ("distinct_2", "Distinct-2", "{:.3f}"),
    ("length", "length", "{:.1f}"),
    ("peak_memory_mb", "peak memory (MB)", "{:.0f}"),
    ("memory_over_baseline_mb", "over the start (MB)", "{:.0f}"),
    ("wall_seconds", "wall time (s)", "{:.1f}"),
    ("cpu_seconds", "CPU time (s)", "{:.1f}"),
    ("completions", "completions", "{:d}"),
    ("learning_rate", "learning rate", "{:g}"),
)
PLOTS = ("reward_vs_samples.png", "reward_vs_time.png", "reward_vs_perplexity.png")


def write_report(results: dict, output_dir: str) -> None:
    """Write `results.json`, `comparison.md` and the plots in `output_dir`, each atomically."""
    write_json(os.path.join(output_dir, "results.json"), results)
    write_text(os.path.join(output_dir, "comparison.md"), comparison_markdown(results))
    plot_curves(results, output_dir)


def comparison_markdown(results: dict) -> str:
    budget = results["budget"]
    completions = " to ".join(str(count) for count in budget["completions"])
    if results["ablation"] is None:
        title, who = "RAFT against RL baselines on one budget", "Every method"
    else:
        title, who = f"RAFT ablation: {results['ablation']}", "Every run"
    if budget.get("reward", "reward model") == "reward model":
        reward, test = "the same reward model", "one sampled completion each"
    else:  # a verifiable task: the reward is 1 for a correct answer, 0 otherwise
        reward = "the same rule reward (1 for the exact answer: every reward below is an accuracy)"
        test = "one sampled completion each, and the greedy one (greedy reward)"
    lines = [
        f"# {title}",
        "",
        f"{who} started from the same SFT policy, with {reward} and the same prompts, and generated "
        f"{completions} completions (at most {budget['max_completion_length']} new tokens); each kept its best "
        f"learning rate of {budget['learning_rates']} by the reward on {budget['curve_prompts']} held-out validation "
        f"prompts. Held-out test: {budget['test_prompts']} other prompts, {test}. Peak memory: "
        f"{budget['memory']} ({budget['device']}).",
        "",
        table([("SFT (start)", results["start"]), *finished_methods(results).items()]),
    ]
    ratios = target_ratios(finished_methods(results))
    if ratios:
        lines += ["", *[f"- {line}" for line in ratios]]
    at_equal_time = equal_time_lines(finished_methods(results))
    if at_equal_time:
        lines += ["", *[f"- {line}" for line in at_equal_time]]
    failed = {name: row["failed"] for name, row in results["methods"].items() if "failed" in row}
    if failed:
        lines += ["", *[f"- **{name} failed** at every learning rate: {error}" for name, error in failed.items()]]
    return "\n".join(lines) + "\n"


def finished_methods(results: dict) -> dict:
    """The methods that trained at one learning rate at least (a failed one is listed apart, with its error)."""
    return {name: row for name, row in results["methods"].items() if "failed" not in row}


def table(rows: list[tuple[str, dict]]) -> str:
    """One row per (name, row); a column that no row has (greedy reward off a verifiable task, say) is left out."""
    columns = [column for column in COLUMNS if any(row.get(column[0]) is not None for _, row in rows)]
    lines = ["| method | " + " | ".join(title for _, title, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows:
        cells = [format_value(row.get(key), spec) for key, _, spec in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_value(value, spec: str) -> str:
    return "–" if value is None else spec.format(value)


def target_ratios(methods: dict) -> list[str]:
    """RAFT against each other method: reward difference; peak-memory, wall-time and CPU-time ratios."""
    if "raft" not in methods:
        return []
    raft = methods["raft"]
    lines = []
    for name, row in methods.items():
        if name == "raft":
            continue
        lines.append(
            f"RAFT vs {name.upper()}: reward {raft['final_reward'] - row['final_reward']:+.3f}, peak memory "
            f"x{raft['peak_memory_mb'] / row['peak_memory_mb']:.2f}, wall time "
            f"x{raft['wall_seconds'] / row['wall_seconds']:.2f}, CPU time "
            f"x{raft['cpu_seconds'] / row['cpu_seconds']:.2f}"
        )
    return lines


def equal_time_lines(methods: dict, baseline: str = "grpo") -> list[str]:
    """Every method against `baseline` on the clock, read off the validation curves (training time, evaluations
    excluded): its reward when the baseline's run ended, and when it first reached the baseline's final reward."""
    if baseline not in methods:
        return []
    end = methods[baseline]["curve"][-1]
    lines = []
    for name, row in methods.items():
        if name == baseline:
            continue
        by_then = [point for point in row["curve"] if point["seconds"] <= end["seconds"]]
        reached = next((point for point in row["curve"] if point["reward"] >= end["reward"]), None)
        when = (
            f"reached {baseline.upper()}'s final {end['reward']:.3f} at {reached['seconds']:.0f} s "
            f"(x{reached['seconds'] / end['seconds']:.2f} of its time)"
            if reached is not None
            else f"never reached {baseline.upper()}'s final {end['reward']:.3f}"
        )
        # A run's first point is taken when its training begins, which can be after a very short baseline's end.
        then = (
            f"validation reward {by_then[-1]['reward']:.3f} after {by_then[-1]['completions']} completions"
            if by_then
            else "no curve point yet"
        )
        lines.append(f"{name} at {baseline.upper()}'s training time ({end['seconds']:.0f} s): {then}; {when}")
    return lines


def plot_curves(results: dict, output_dir: str) -> None:
    """Held-out reward against completions generated, against training time, and against perplexity (the paper's
    Figure 1, right: each method's path from the start, one point per checkpoint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = finished_methods(results)
    for filename, x_key, x_label in (
        ("reward_vs_samples.png", "completions", "completions generated"),
        ("reward_vs_time.png", "seconds", "training time (s, evaluations excluded)"),
        ("reward_vs_perplexity.png", "perplexity", "perplexity of held-out chosen responses"),
    ):
        figure, axes = plt.subplots(figsize=(5.5, 3.8))
        for name, row in methods.items():
            points = [point for point in row["curve"] if point.get(x_key) is not None]
            axes.plot([p[x_key] for p in points], [p["reward"] for p in points], marker="o", markersize=3, label=name)
            if x_key == "perplexity" and points:
                axes.annotate("end", (points[-1][x_key], points[-1]["reward"]), fontsize=7)
        if x_key == "perplexity" and not any(p.get("perplexity") for row in methods.values() for p in row["curve"]):
            axes.text(0.5, 0.5, "no held-out chosen responses: no perplexity", ha="center", transform=axes.transAxes)
        axes.set_xlabel(x_label)
        measure = "reward" if results["budget"].get("reward", "reward model") == "reward model" else "accuracy"
        axes.set_ylabel(f"held-out {measure} (validation prompts)")
        axes.legend()
        figure.tight_layout()
        with atomic_path(os.path.join(output_dir, filename)) as partial:
            figure.savefig(partial, format="png", dpi=120)
        plt.close(figure)


def seed_summary(all_results: list[dict]) -> str:
    """A markdown table over several comparisons (one per seed): per method and column, the mean and the range."""
    names = list(all_results[0]["methods"])
    rows = [("SFT (start)", [results["start"] for results in all_results])]
    rows += [(name, [results["methods"][name] for results in all_results]) for name in names]
    lines = [
        f"Mean over {len(all_results)} runs, range in brackets.",
        "",
        "| method | " + " | ".join(title for _, title, _ in COLUMNS[:-1]) + " |",
        "|---" * len(COLUMNS) + "|",
    ]
    for name, per_seed in rows:
        cells = []
        for key, _, spec in COLUMNS[:-1]:
            values = [row.get(key) for row in per_seed]
            if any(value is None for value in values):
                cells.append("–")
                continue
            spec = spec.replace(":d", ":.0f")
            cells.append(
                f"{spec.format(statistics.mean(values))} [{spec.format(min(values))}, {spec.format(max(values))}]"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
