"""What the processes of a run agree on, with one all-reduce of a small integer: every process then takes the same
path through a stage, and so makes the same collective calls (a process that took another path would leave the
others waiting in a gather)."""

import torch


def largest(accelerator, value: int) -> int:
    """The largest of every process's `value` (the value itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor(value, device=accelerator.device)
    return int(accelerator.reduce(tensor, reduction="max").item())


def on_every_process(accelerator, flag: bool) -> bool:
    """Whether `flag` holds on every process: no process has it False."""
    return largest(accelerator, int(not flag)) == 0
