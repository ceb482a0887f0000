"""What a run shows on the console: the stage table and progress bars, and nothing else unless asked (`--verbose`)."""

import logging
import warnings

from transformers.trainer_callback import PrinterCallback, ProgressCallback


class QuietProgressCallback(ProgressCallback):
    """The Trainer's progress bar without its raw log-dict lines: the stage table says it once, in columns."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def quiet_callbacks(trainer) -> None:
    """Swap the Trainer's printing callbacks (the progress bar's log lines, or the plain printer when bars are off)
    for the quiet progress bar: each stage is printed once, by the stage table."""
    for callback in (PrinterCallback, ProgressCallback):
        if trainer.pop_callback(callback) is not None and callback is ProgressCallback:
            trainer.add_callback(QuietProgressCallback)


def quiet_dependencies() -> None:
    """Silence what the libraries print that a user of `raft-train` or `raft-compare` cannot act on: dataset
    preparation bars, model load and save bars and reports, deprecation and experimental-API warnings. Errors still
    show."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    for name in ("trl", "accelerate", "peft", "raft_trainer"):
        logging.getLogger(name).setLevel(logging.ERROR if name != "raft_trainer" else logging.WARNING)
    # DeepSpeed sets its logger's level itself when the Trainer imports it ("Setting accelerator to CPU" on a CPU
    # machine): a filter on the logger outlasts that.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
