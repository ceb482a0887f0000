"""The stage in flight, on disk: its candidates as soon as generation ends, its rewards as soon as scoring ends.

Generation is a stage's expensive part. A run that dies after it (in scoring, in writing the stage file, in the
fine-tuning before a checkpoint) finds these files when it resumes and goes on from there instead of generating or
scoring the stage again. Each file says which run made it (`run_identity`), and is used only by the same run: the
same stage, started at the same optimizer step, with the same configuration, prompts and number of processes.

Each file also holds the random state right after its phase, so that the resumed run draws the same random numbers
from there on as the run that never stopped (sampling uses the global generators).
"""

import glob
import json
import logging
import os
import random

import numpy as np
import torch

from ..files import atomic_path

logger = logging.getLogger(__name__)

# Settings that say where a run reports or saves, not what its stages produce: a run resumed with other values
# of these may still use its files.
NOT_IDENTITY = {
    "output_dir",
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


def in_flight_path(output_dir: str, stage: int, part: str, process_index: int) -> str:
    return os.path.join(in_flight_dir(output_dir), f"stage_{stage:03d}.{part}.process_{process_index}.pt")


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


def save_part(path: str, identity: dict, values: dict) -> None:
    """Write one phase's result with the run's identity and the random state after it, atomically."""
    with atomic_path(path) as partial:
        torch.save({"identity": identity, "values": values, "random_state": random_state()}, partial)


def load_part(path: str, identity: dict) -> dict | None:
    """What `save_part` wrote at `path` (`values` and `random_state`) if it exists and belongs to this run; None
    otherwise, with a warning when the file is another run's."""
    if not os.path.isfile(path):
        return None
    saved = torch.load(path, weights_only=True)
    differences = identity_differences(saved["identity"], identity)
    if differences:
        logger.warning(
            f"{path} was written by another run (it differs in {', '.join(differences)}); running the stage's "
            "phase again."
        )
        return None
    return saved


def discard_parts(output_dir: str, process_index: int, before_stage: int | None = None) -> None:
    """Remove this process's in-flight files of the stages before `before_stage` (all of them, and the folder once
    empty, when None)."""
    folder = in_flight_dir(output_dir)
    for path in glob.glob(os.path.join(folder, f"stage_*.*.process_{process_index}.pt*")):
        stage = int(os.path.basename(path).split(".")[0].removeprefix("stage_"))
        if before_stage is None or stage < before_stage:
            os.remove(path)
    if before_stage is None and os.path.isdir(folder) and not os.listdir(folder):
        try:
            os.rmdir(folder)
        except OSError:  # another process wrote into it meanwhile
            pass


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
