"""One training run in its own process: train, measure peak memory and time, evaluate on held-out prompts.

Each run gets a fresh interpreter (multiprocessing's spawn), so its memory is its own: the peak resident set
size of the process on CPU, the CUDA peak allocation on GPU (`memory.process_peak_mb`: RAFT's per-phase
measurements reset the counters, and it remembers the peaks from before each reset).
"""

import concurrent.futures
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, set_seed
from transformers.utils import logging as transformers_logging

from ..evaluation import evaluate_model, reward_function_scorer
from ..files import write_json
from ..memory import process_peak_mb, resident_memory_mb
from ..reporting.console import quiet_dependencies
from ..rewards import RewardModel
from ..sequences import load_tokenizer, sampling_config
from ..tasks.accuracy import greedy_config
from .methods import TRAINERS, Run
from .progress import RewardCurve, Stopwatch
from .settings import CompareArguments
from .task import ComparisonTask


def run_in_own_process(function, *args):
    """`function(*args)` in a fresh spawned process; its result (or exception) comes back. The process ends with
    its parent: a comparison stopped with SIGTERM or SIGKILL leaves no run training on."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=end_with_parent) as pool:
        return pool.submit(function, *args).result()


def end_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (elsewhere: nothing)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def train_and_measure(run: Run) -> dict:
    """Train `run`, then evaluate its policy on the held-out test prompts; returns the run's row (and writes it to
    `run.output_dir/row.json`)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    settings, task = run.settings, run.task
    if not settings.verbose:
        quiet_dependencies()
    if settings.quiet:
        transformers_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline_mb = resident_memory_mb()
    stopwatch = Stopwatch()
    set_seed(settings.seed)

    tokenizer = load_tokenizer(task.policy)
    reward = load_reward(task, device)
    evaluate = Evaluator(task, tokenizer, reward, settings)

    def report(point: dict) -> None:
        if not settings.quiet:
            print(
                f"  {run.label} lr={run.learning_rate:g}: {point['completions']:>7d} completions "
                f"{point['seconds']:>7.1f} s  held-out reward {point['reward']:.3f}",
                flush=True,
            )

    curve = RewardCurve(evaluate.curve_point, settings.completions_per_checkpoint, stopwatch, report)
    trained = TRAINERS[run.method](run, tokenizer, reward, curve)
    wall_seconds, cpu_seconds = stopwatch.seconds(), stopwatch.cpu_seconds()
    peak_mb = process_peak_mb(device)

    row = {
        "method": run.method,
        "learning_rate": run.learning_rate,
        **evaluate.final(trained.model),
        "peak_memory_mb": peak_mb,
        "baseline_memory_mb": baseline_mb if device == "cpu" else None,
        "memory_over_baseline_mb": peak_mb - baseline_mb if device == "cpu" else None,
        "wall_seconds": wall_seconds,
        "cpu_seconds": cpu_seconds,
        "completions": trained.completions,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "curve": curve.points,
        "training_log": trained.log_history,
    }
    write_json(os.path.join(run.output_dir, "row.json"), row)
    return row


def evaluate_start(task: ComparisonTask, settings: CompareArguments) -> dict:
    """The SFT start on the test prompts (the paper's Table 3 first row), in a process of its own."""
    if not settings.verbose:
        quiet_dependencies()
    set_seed(settings.seed)
    tokenizer = load_tokenizer(task.policy)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = AutoModelForCausalLM.from_pretrained(task.policy).to(device)
    return Evaluator(task, tokenizer, load_reward(task, device), settings).final(policy)


def load_reward(task: ComparisonTask, device: str) -> Callable[..., list]:
    """The reward every method trains on and is evaluated with: the task's rule, else its reward model."""
    if task.reward_fn is not None:
        return task.reward_fn
    return RewardModel.from_pretrained(task.reward_model, show_progress=False).to(device)


class Evaluator:
    """The held-out evaluations every method gets alike: the same reward, sampling settings and prompts."""

    def __init__(self, task: ComparisonTask, tokenizer, reward: Callable[..., list], settings: CompareArguments):
        self.task, self.tokenizer, self.settings = task, tokenizer, settings
        self.score = reward_function_scorer(reward)
        self.generation_config = sampling_config(tokenizer, settings.max_completion_length, settings.temperature)

    def _evaluate(self, model, prompts, chosen, greedy: bool = False) -> dict:
        return evaluate_model(
            model,
            self.tokenizer,
            prompts,
            self.score,
            greedy_config(self.generation_config) if greedy else self.generation_config,
            chosen=chosen,
            true_score=self.task.true_score,
            seed=self.settings.seed,
            batch_size=self.settings.generation_batch_size,
        )

    def curve_point(self, model) -> dict:
        """Reward, true score (where known) and perplexity (where chosen responses are known) on the curve prompts."""
        results = self._evaluate(model, self.task.curve_prompts, self.task.curve_chosen)
        return {name: results[name] for name in ("reward", "true_score", "perplexity") if name in results}

    def final(self, model) -> dict:
        """The paper's Table 3 columns on the test prompts: `final_reward`, `greedy_reward`, `true_score` and
        `perplexity` (None where unknown), diversity and length."""
        results = self._evaluate(model, self.task.test_prompts, self.task.test_chosen)
        return {
            "final_reward": results.pop("reward"),
            # On a verifiable task also the greedy completion's accuracy, the figure reasoning papers report.
            "greedy_reward": (
                self._evaluate(model, self.task.test_prompts, None, greedy=True)["reward"]
                if self.task.verifiable
                else None
            ),
            "true_score": results.pop("true_score", None),
            "perplexity": results.pop("perplexity", None),
            **results,
        }
