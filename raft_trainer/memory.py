"""Memory of a RAFT stage: peaks per phase, models that only visit the accelerator while they work, eval mode.

RAFT's phases are decoupled, so only the model a phase uses needs the accelerator: reward models (and the KL
reference) can wait on the CPU while the policy generates and trains.
"""

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate.utils.memory import clear_device_cache


def move_models(models, device: torch.device) -> None:
    """Move each of `models` that is a model (anything with `.to`: modules, reward models) to `device`; reward
    functions that are plain callables, and None, are passed over."""
    for model in models:
        if hasattr(model, "to"):
            model.to(device)


@contextmanager
def visiting(model, device: torch.device, offload: bool) -> Iterator[None]:
    """With `offload`, move `model` (anything with `.to`) to `device` for the block and back to the CPU after it."""
    if not offload or not hasattr(model, "to"):
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to("cpu")
        clear_device_cache()


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode for the block (no dropout: generation, scoring, evaluation), then back in the mode it was
    in, since a trainer leaves its model in training mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class PhaseMemory:
    """Peak memory of each phase of a stage, as log metrics (MiB).

    On CUDA: the peak of allocated memory during the phase (`memory/<phase>_peak_mb`). On the CPU no such counter
    can be reset, so only the process's peak resident memory so far is reported (`memory/peak_rss_mb`).
    """

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def per_phase(self) -> bool:
        return self.device.type == "cuda"

    def start(self) -> None:
        if self.per_phase:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self, phase: str) -> dict[str, float]:
        if self.per_phase:
            return {f"memory/{phase}_peak_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        return {"memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB

    @contextmanager
    def phase(self, name: str, metrics: dict) -> Iterator[None]:
        self.start()
        yield
        metrics.update(self.peak(name))
