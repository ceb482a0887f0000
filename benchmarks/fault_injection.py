"""Fault injection, the long version of tests/test_faults.py: faults at random points of a tiny several-stage RAFT run.

A run of tests/faults/faulty_run.py is interrupted `--faults` times, at points drawn at random (seeded) in the order
the run reaches them: while a stage generates, is scored or has its stage file written, inside an optimizer step, or
while a checkpoint is saved; each a SIGKILL, or now and then a SIGTERM or SIGINT. After each fault the run is
resumed with `--resume`, and at the end its stage files and weights are compared with an uninterrupted run's.

    python benchmarks/fault_injection.py --faults 20 --num_stages 6 --seed 0
"""

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent.parent / "tests" / "faults" / "faulty_run.py"


def run(output_dir: Path, *options: str) -> tuple[int, float]:
    """Run the faulty script; its exit status and wall seconds."""
    start = time.perf_counter()
    command = [sys.executable, str(SCRIPT), str(output_dir), "--resume", *options]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode not in (0, -9, 143, 130):
        raise RuntimeError(f"{command} failed unexpectedly:\n{result.stderr[-3000:]}")
    return result.returncode, time.perf_counter() - start


def fault_points(events: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` faults at distinct points of the uninterrupted run's `events`, in the order the run reaches them."""
    points = sorted(rng.sample(range(len(events)), min(count, len(events))))
    faults = []
    for index in points:
        _, phase, number = events[index].split()
        kind = rng.choices(["KILL", "TERM", "INT"], weights=[8, 1, 1])[0]
        if phase in ("write", "checkpoint"):
            kind = "KILL"  # a signal the run catches would only end it after these; they are tested for SIGKILL
        if faults and faults[-1] in (f"step:{number}:TERM", f"step:{number}:INT") and phase == "checkpoint":
            continue  # the interruption saved this checkpoint already: the resumed run never saves it again
        faults.append(f"{phase}:{number}:{kind}")
    return faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--num_stages", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="Where the runs go (default: a temporary folder).")
    options = parser.parse_args()
    root = Path(options.output_dir or tempfile.mkdtemp(prefix="raft-faults-"))
    stages = ["--num_stages", str(options.num_stages)]

    reference = root / "uninterrupted" / "out"
    status, reference_seconds = run(reference, *stages)
    assert status == 0
    events = (reference.parent / "events.log").read_text().splitlines()
    faults = fault_points(events, options.faults, random.Random(options.seed))

    output_dir = root / "interrupted" / "out"
    statuses, seconds = [], 0.0
    for fault in faults:
        status, elapsed = run(output_dir, *stages, "--fault", fault)
        statuses.append(status)
        seconds += elapsed
    status, elapsed = run(output_dir, *stages)
    assert status == 0
    seconds += elapsed

    names = sorted(os.listdir(reference / "stages"))
    same_files = sorted(os.listdir(output_dir / "stages")) == names and all(
        (output_dir / "stages" / name).read_bytes() == (reference / "stages" / name).read_bytes() for name in names
    )
    weights, expected = (load_file(path / "final" / "model.safetensors") for path in (output_dir, reference))
    largest_difference = max((weights[name] - tensor).abs().max().item() for name, tensor in expected.items())
    entered = collections.Counter(
        line.split(" ", 1)[1] for line in (output_dir.parent / "events.log").read_text().splitlines()
    )
    result = {
        "faults": dict(zip(faults, statuses)),
        "faults_that_struck": sum(status != 0 for status in statuses),
        "stage_files_identical": same_files,
        "largest_weight_difference": largest_difference,
        "nothing_left_in_flight": not (output_dir / "in_flight").exists(),
        "stages_generated_again": sum(entered[f"generate {s}"] - 1 for s in range(options.num_stages)),
        "stages_scored_again": sum(entered[f"score {s}"] - 1 for s in range(options.num_stages)),
        "uninterrupted_seconds": round(reference_seconds, 1),
        "interrupted_seconds": round(seconds, 1),
    }
    print(json.dumps(result, indent=2))
    torch.testing.assert_close(largest_difference, 0.0, rtol=0, atol=1e-6)
    assert same_files and result["nothing_left_in_flight"]


if __name__ == "__main__":
    main()
