"""Following a training run: how many completions it has generated, its time net of evaluations, and its curve."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel, TrainerCallback


class Stopwatch:
    """Seconds since start, wall-clock and CPU (all threads of this process), leaving out the time spent inside
    `paused()` blocks (evaluations)."""

    def __init__(
        self, clock: Callable[[], float] = time.perf_counter, cpu_clock: Callable[[], float] = time.process_time
    ):
        self.clock, self.cpu_clock = clock, cpu_clock
        self.start, self.cpu_start = clock(), cpu_clock()
        self.paused_seconds = self.paused_cpu_seconds = 0.0

    def seconds(self) -> float:
        return self.clock() - self.start - self.paused_seconds

    def cpu_seconds(self) -> float:
        return self.cpu_clock() - self.cpu_start - self.paused_cpu_seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        began, cpu_began = self.clock(), self.cpu_clock()
        try:
            yield
        finally:
            self.paused_seconds += self.clock() - began
            self.paused_cpu_seconds += self.cpu_clock() - cpu_began


class CountingReward:
    """A reward function (TRL's convention) that counts the completions it scores: every method scores each
    completion it generates exactly once, so this counts what a method generated."""

    def __init__(self, reward_fn: Callable[..., list]):
        self.reward_fn = reward_fn
        self.count = 0
        self.__name__ = getattr(reward_fn, "__name__", type(reward_fn).__name__)

    def __call__(self, completions: list, **kwargs) -> list[float]:
        self.count += len(completions)
        return self.reward_fn(completions=completions, **kwargs)


class CountingModule:
    """Counts the sequences passing through a module (a forward hook on a reward model's scoring head), for trainers
    that call a reward model directly (TRL's PPO)."""

    def __init__(self, module: torch.nn.Module):
        self.count = 0
        module.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.count += output.shape[0]


class RewardCurve(TrainerCallback):
    """Evaluates the policy on held-out prompts at the start and each time the run has generated another
    `every` completions, with the stopwatch paused and the random state restored afterwards (so evaluating does not
    change the run). Points: `completions`, `seconds` (training time so far), and what `evaluate` returns.

    With `at_stage_end` it evaluates at the end of a Trainer epoch (a RAFT stage: after fine-tuning on what the stage
    generated) instead of after an optimizer update.
    """

    def __init__(
        self,
        evaluate: Callable[[PreTrainedModel], dict[str, float]],
        every: int,
        stopwatch: Stopwatch,
        report: Callable[[dict], None] | None = None,
    ):
        self.evaluate = evaluate
        self.every = every
        self.stopwatch = stopwatch
        self.report = report
        self.counter = None  # what counts the run's completions; `attach` sets it, with the policy
        self.policy: Callable[[], PreTrainedModel] | None = None
        self.at_stage_end = False
        self.points: list[dict] = []

    def attach(self, counter, policy: Callable[[], PreTrainedModel], at_stage_end: bool = False) -> None:
        """Follow a run: `counter.count` is its completions so far, `policy()` its current policy."""
        self.counter, self.policy, self.at_stage_end = counter, policy, at_stage_end

    def record(self) -> None:
        count = self.counter.count
        # Read before the pause begins: read inside it, the reading would include a moment the pause then takes
        # off the run's time, so a run ending right after its last point could end "before" that point.
        point = {"completions": count, "seconds": self.stopwatch.seconds()}
        with self.stopwatch.paused(), torch.random.fork_rng(devices=_cuda_devices()):
            point.update(self.evaluate(self.policy()))
        self.counter.count = count  # the evaluation may score with the counted model (PPO's reward model)
        self.points.append(point)
        if self.report is not None:
            self.report(point)

    def due(self) -> bool:
        return self.counter.count >= self.every * len(self.points)

    def on_train_begin(self, args, state, control, **kwargs):
        self.record()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.at_stage_end and self.due():
            self.record()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.at_stage_end and self.due():
            self.record()


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
