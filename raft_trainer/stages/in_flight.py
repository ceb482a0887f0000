"""The stage in flight, on disk: its candidates as soon as generation ends, its rewards as soon as scoring ends.

Generation is a stage's expensive part. A run that dies after it (in scoring, in writing the stage file, in the
fine-tuning before a checkpoint) finds these files when it resumes and goes on from there instead of generating or
scoring the stage again. Each file says which run made it (`run_identity`), and is used only by the same run: the
same stage, started at the same optimizer step, with the same configuration, prompts and number of processes; and
only for the stage the run resumes at (a later stage's files came from a model the resumed run trains again).

Each file also holds the random state right after its phase, so that the resumed run draws the same random numbers
from there on as the run that never stopped (sampling uses the global generators).
"""

import glob
import json
import logging
import os
import random
from collections.abc import Callable

import numpy as np
import torch

from ..files import atomic_path

logger = logging.getLogger(__name__)

# Settings that say where a run reports or saves, not what its stages produce: a run resumed with other values
# of these may still use its files.
NOT_IDENTITY = {
    "output_dir",
    "max_empty_stages",  # raised to resume after a run stopped on empty stages
    "logging_dir",
    "run_name",
    "report_to",
    "disable_tqdm",
    "resume_from_checkpoint",
    "logging_strategy",
    "logging_steps",
    "logging_first_step",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "save_only_model",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_token",
    "hub_private_repo",
    "eval_strategy",
    "eval_steps",
    "per_device_eval_batch_size",
    "log_completions",
    "num_completions_to_print",
    "ddp_timeout",
}
PARTS = ("generated", "scored")  # a stage's candidates, then the same with their rewards


def in_flight_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "in_flight")


class InFlightFiles:
    """One process's in-flight files in `output_dir/in_flight`: `stage_<t>.<part>.process_<i>.pt`, where part is
    "generated" (the candidates) or "scored" (the candidates after the sample filter, with their rewards)."""

    def __init__(self, output_dir: str, process_index: int):
        self.folder = in_flight_dir(output_dir)
        self.process_index = process_index

    def path(self, stage: int, part: str) -> str:
        return os.path.join(self.folder, f"stage_{stage:03d}.{part}.process_{self.process_index}.pt")

    def save(self, stage: int, part: str, identity: dict, values: dict) -> None:
        """Write one phase's result with the run's identity and the random state after it, atomically."""
        with atomic_path(self.path(stage, part)) as partial:
            torch.save({"identity": identity, "values": values, "random_state": random_state()}, partial)

    def load(self, stage: int, part: str, identity: dict) -> dict | None:
        """What `save` wrote (`values` and `random_state`) if the file exists, reads back and belongs to this run;
        None otherwise, with a warning naming what is wrong with a file that is there."""
        path = self.path(stage, part)
        if not os.path.isfile(path):
            return None
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as error:  # unreadable (a candidate type `weights_only` refuses, say): run the phase again
            logger.warning(
                f"{path} cannot be read back ({type(error).__name__}: {error}); running the stage's phase again."
            )
            return None
        differences = identity_differences(saved["identity"], identity)
        if differences:
            logger.warning(
                f"{path} was written by another run (it differs in {', '.join(differences)}); running the stage's "
                "phase again."
            )
            return None
        return saved

    def remove(self, stage: int, part: str) -> None:
        if os.path.exists(self.path(stage, part)):
            os.remove(self.path(stage, part))

    def discard(self, stages: Callable[[int], bool] = lambda stage: True) -> None:
        """Remove this process's files of the stages `stages` picks (all by default). The folder stays: another
        process may be about to write into it (`remove_folder` takes it away once no process will)."""
        for path in glob.glob(os.path.join(self.folder, f"stage_*.*.process_{self.process_index}.pt*")):
            if stages(int(os.path.basename(path).split(".")[0].removeprefix("stage_"))):
                os.remove(path)

    def remove_folder(self) -> None:
        """Remove the folder if it is empty; call it when no process writes any more (after the run's end)."""
        try:
            os.rmdir(self.folder)
        except OSError:  # not there (another node's process removed a shared one), or not empty
            pass


def run_identity(settings: dict, stage: int, start_step: int, prompts_fingerprint: str, num_processes: int) -> dict:
    """What a stage's files must match to be used: the stage, the optimizer step it started at, the prompt dataset,
    the number of processes, and every setting that changes what a stage produces (all but `NOT_IDENTITY`)."""
    relevant = {name: value for name, value in settings.items() if name not in NOT_IDENTITY}
    return {
        "stage": stage,
        "start_step": start_step,
        "prompts": prompts_fingerprint,
        "num_processes": num_processes,
        "settings": json.dumps(relevant, sort_keys=True, default=str),
    }


def identity_differences(saved: dict, expected: dict) -> list[str]:
    """The names of what differs between two identities (settings by name)."""
    differences = [name for name in expected if name != "settings" and saved.get(name) != expected[name]]
    saved_settings, settings = json.loads(saved.get("settings", "{}")), json.loads(expected["settings"])
    differences += sorted(
        name for name in settings.keys() | saved_settings.keys() if saved_settings.get(name) != settings.get(name)
    )
    return differences


def random_state() -> dict:
    """The global random generators' states (Python, NumPy, torch CPU and CUDA), in types `weights_only` loads."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
