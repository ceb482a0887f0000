"""Memory of a RAFT stage: peaks per phase (and of the whole process), models that only visit the accelerator while
they work, eval mode, whole parameters of a sharded policy, and the sharding engine that was asked for.

RAFT's phases are decoupled, so only the model a phase uses needs the accelerator: reward models (and the KL
reference) can wait on the CPU while the policy generates and trains.
"""

import os
import resource
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate.utils import parse_flag_from_env
from accelerate.utils.memory import clear_device_cache
from transformers import Trainer
from trl.models import unwrap_model_for_generation


def move_models(models, device: torch.device) -> None:
    """Move each of `models` that is a model (anything with `.to`: modules, reward models) to `device`; reward
    functions that are plain callables, and None, are passed over."""
    for model in models:
        if hasattr(model, "to"):
            model.to(device)


def check_engines(trainer: Trainer) -> None:
    """An engine asked for (by the accelerate config or TrainingArguments) must be the one that runs: accelerate
    applies FSDP only on accelerators, so with `use_cpu` it would train with plain data parallelism, unsaid."""
    for engine, asked, applied in (
        ("FSDP", bool(trainer.args.fsdp) or parse_flag_from_env("ACCELERATE_USE_FSDP"), trainer.is_fsdp_enabled),
        (
            "DeepSpeed",
            bool(trainer.args.deepspeed) or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"),
            trainer.is_deepspeed_enabled,
        ),
    ):
        if asked and not applied:
            why = " (accelerate applies FSDP on GPUs and other accelerators only, not with use_cpu)"
            raise ValueError(
                f"{engine} was asked for (accelerate config or TrainingArguments), but accelerate runs "
                f"{trainer.accelerator.distributed_type.value} and would train without it"
                f"{why if engine == 'FSDP' else ''}. Launch on GPUs, or with a data-parallel config "
                "(examples/accelerate_configs/multi_gpu.yaml) on CPUs."
            )


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
def whole_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, a model sharded with FSDP2 holds its whole parameters on every process (no-op otherwise).

    A sharded forward pass gathers each block's parameters from every process, so each process would have to run as
    many forward passes as the others; while sampling and reading log-probs, processes have unequal shares of a
    stage (and generation stops when a process's own completions end). With the parameters gathered once, each
    runs what it has; they are sharded again afterwards.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = [module for module in model.modules() if isinstance(module, FSDPModule)]
    if not sharded:
        yield
        return
    # Whether each module reshards after its forward pass: its FSDP state keeps a mesh for that only when it does.
    reshards = [
        getattr(module._get_fsdp_state()._fsdp_param_group, "post_forward_mesh_info", True) is not None
        for module in sharded
    ]
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module, reshard in zip(sharded, reshards):
            module.reshard()
            module.set_reshard_after_forward(reshard, recurse=False)


@contextmanager
def policy_for_generation(model: torch.nn.Module, accelerator) -> Iterator[torch.nn.Module]:
    """The policy unwrapped for sampling (DeepSpeed ZeRO-3 parameters gathered), by TRL's own
    `unwrap_model_for_generation`.

    TRL reads the model's gradient-checkpointing switches by their old names, which transformers 5 deprecates with a
    FutureWarning at every call: a user would see one to three of them each time the policy samples, for nothing they
    can change. Those
    (and only those) are silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning
        )
        with unwrap_model_for_generation(model, accelerator) as policy:
            yield policy


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
    """Peak memory of each phase of a stage, as log metrics (MiB): `memory/<phase>_peak_mb`.

    On CUDA: the peak of allocated memory during the phase. On the CPU (Linux): the peak resident set size during the
    phase (the kernel's high-water mark, reset at the phase's start). Where it cannot be reset, `memory/peak_rss_mb`:
    the process's peak so far. The counters are reset, so a caller measuring the whole run reads
    `process_peak_mb`, which remembers the peaks from before each reset.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.per_phase = device.type == "cuda" or (device.type == "cpu" and _rss_peak_resettable())

    def start(self) -> None:
        if self.per_phase:
            reset_peak(self.device)

    def peak(self, phase: str) -> dict[str, float]:
        if self.per_phase:
            return {f"memory/{phase}_peak_mb": _counter_peak_mb(self.device)}
        return {"memory/peak_rss_mb": process_peak_mb(self.device)}

    @contextmanager
    def phase(self, name: str, metrics: dict) -> Iterator[None]:
        self.start()
        yield
        metrics.update(self.peak(name))


_PEAKS_BEFORE_RESET: dict[str, float] = {}  # device type -> the highest peak a reset has cleared


def reset_peak(device: torch.device) -> None:
    """Start the peak counter of `device` (CUDA's allocator, or this process's resident set) afresh, remembering
    the peak so far for `process_peak_mb`."""
    _PEAKS_BEFORE_RESET[device.type] = process_peak_mb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # Linux: reset the resident set's high-water mark (VmHWM)


def process_peak_mb(device: torch.device | str) -> float:
    """The peak memory of this process so far (MiB), resets by `PhaseMemory` included: CUDA's peak allocated
    memory, or the peak resident set size on the CPU."""
    device = torch.device(device)
    return max(_PEAKS_BEFORE_RESET.get(device.type, 0.0), _counter_peak_mb(device))


def resident_memory_mb() -> float:
    """This process's resident memory now (MiB)."""
    return _proc_status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _counter_peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _proc_status_mb(field: str) -> float | None:
    """A memory figure of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is none. (`ru_maxrss` of a
    spawned child also counts the parent it was forked from before exec, so it is only the fallback.)"""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_peak_resettable() -> bool:
    return _proc_status_mb("VmHWM") is not None and os.access("/proc/self/clear_refs", os.W_OK)
