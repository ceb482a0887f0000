"""Stopping on SIGTERM or SIGINT without losing work.

Schedulers and spot instances send SIGTERM before they kill; Ctrl-C sends SIGINT. Either, during `train()`, asks the
trainer to stop at the next safe point: the end of the optimizer step in progress (the Trainer then saves a
checkpoint, with the stage's kept set when inside a stage), or the end of the generation or scoring phase in progress
(its result is already on disk, see `stages/in_flight.py`). The process then exits with status 128 + the signal's
number, as a shell reports a process ended by that signal, after printing how to resume. A second Ctrl-C stops at
once.
"""

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SystemExit):
    """Raised by `train()` once an interrupted run has saved what it needs to resume; exits with 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message


class StopRequest:
    """The signal this process received during `train()`, if any (`signum`), and the handlers that record it."""

    def __init__(self):
        self.signum: int | None = None

    @contextmanager
    def listening(self) -> Iterator["StopRequest"]:
        """Record SIGTERM and SIGINT for the block instead of dying of them (main thread only: Python delivers
        signals there), then put the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        for signum in SIGNALS:
            signal.signal(signum, self._record)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python

    def _record(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum
        message = (
            f"raft-trainer: {signal.Signals(signum).name} received; stopping after the step or phase in progress, "
            "with a checkpoint (Ctrl-C again stops at once).\n"
        )
        os.write(2, message.encode())  # not print: the handler may run while the console is being written to


class StopOnSignalCallback(TrainerCallback):
    """Turns a signal into the Trainer's own save-and-stop: at the end of the step in progress, or at the epoch's end
    when it came after the last step's check; no evaluation on the way out. Every process calls both hooks, so the
    processes' agreement on the stop (`stop_requested`, one all-reduce) is reached at the same points."""

    def __init__(self, trainer):  # a StageTrainer
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer._stop_requested():
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.trainer._stop_requested():
            control.should_evaluate = False
            control.should_save = not self.trainer._checkpoint_saved_at_this_step()
            control.should_training_stop = True
        return control


class StopAtPhaseEnd(Exception):
    """Raised inside a stage, after its generation or scoring, to leave the Trainer's loop on a signal; `train()`
    turns it into `TrainingInterrupted`."""


# What the processes of a run agree on, with one all-reduce of a small integer: every process then takes the same
# path through a stage (stopping, or resuming a phase from disk), and so makes the same collective calls (a process
# that took another path would leave the others waiting in a gather).
def largest(accelerator, value: int) -> int:
    """The largest of every process's `value` (the value itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor(value, device=accelerator.device)
    return int(accelerator.reduce(tensor, reduction="max").item())


def on_every_process(accelerator, flag: bool) -> bool:
    """Whether `flag` holds on every process: no process has it False."""
    return largest(accelerator, int(not flag)) == 0
