"""What `import raft_trainer` costs a language-model run, with the diffusion side lazy against it loaded eagerly.

Each case runs in a fresh process, measured from after `import torch, transformers, trl` (what any TRL user pays
anyway) to after importing `raft_trainer`, `RAFTTrainer` and the `raft-train` CLI: the added wall time and the
added peak RSS. "eager" also imports `DiffusionRAFTTrainer` and the image rewards (diffusers, open_clip), as every
`import raft_trainer` did before they were made lazy. The median of `--repeats` runs per case.

    python benchmarks/import_cost.py --repeats 5
"""

import argparse
import json
import statistics
import subprocess
import sys

MEASURE = """
import json, resource, sys, time
import torch, transformers, trl
start, rss = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import raft_trainer, raft_trainer.cli
from raft_trainer import RAFTTrainer
if sys.argv[1] == "eager":
    from raft_trainer import DiffusionRAFTTrainer
    from raft_trainer.rewards import AestheticScorer, CLIPScore
seconds = time.perf_counter() - start
mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
print(json.dumps({"seconds": seconds, "mib": mib, "diffusers": "diffusers" in sys.modules}))
"""


def measure(case: str) -> dict:
    finished = subprocess.run([sys.executable, "-c", MEASURE, case], capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    results = {}
    for case in ("lazy", "eager"):
        runs = [measure(case) for _ in range(repeats)]
        results[case] = {key: statistics.median(run[key] for run in runs) for key in ("seconds", "mib")}
        results[case]["diffusers loaded"] = runs[0]["diffusers"]
    for case, result in results.items():
        loaded = result["diffusers loaded"]
        print(f"{case:>6}: +{result['seconds']:.2f} s, +{result['mib']:.0f} MiB (diffusers loaded: {loaded})")
    lazy, eager = results["lazy"], results["eager"]
    print(f"lazy / eager: time x{lazy['seconds'] / eager['seconds']:.2f}, memory x{lazy['mib'] / eager['mib']:.2f}")


if __name__ == "__main__":
    main()
