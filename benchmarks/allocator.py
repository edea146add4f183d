"""TensorFlow's CPU allocator: malloc (TensorFlow's default) against its BFC pool (ours).

The allocator is chosen once per process (``TF_CPU_ALLOCATOR_USE_BFC``, read when
TensorFlow allocates its first tensor; ``import unet_cbam`` sets it to true unless it is
set), so the two cannot be interleaved in one process: this script alternates child
processes, ``--repeats`` of each, and keeps each setting's best. Every child builds the
default model for 1-channel images and attention none (untrained), warms both up, and
times ``model.predict`` of 4 images of 512x512 and ``train_on_batch`` of 8 patches of
256x256 and of 128x128, best of --rounds, interleaved; and it reports its peak resident
memory.

    python -m benchmarks.allocator [--repeats 2] [--rounds 5]

Prints a Markdown table and writes benchmarks/results/allocator/allocator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import ROOT, machine, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

SETTINGS = {"malloc": "false", "bfc": "true"}
#: The workloads, model builder and timing are attention_cost.py's.
MODELS = {"cbam": {}, "none": {"attention": "none"}}


def child(rounds: int) -> dict:
    """Time every model and workload in this process; the best seconds and peak memory."""
    import numpy as np
    from attention_cost import WORKLOADS, build, step

    rng = np.random.default_rng(0)
    data = {name: (rng.random((batch, side, side, 1), dtype=np.float32),
                   (rng.random((batch, side, side, 1)) > 0.5).astype(np.float32))
            for name, (_, batch, side) in WORKLOADS.items()}
    models = {name: build(fields) for name, fields in MODELS.items()}
    for model in models.values():
        for workload, (what, _, _) in WORKLOADS.items():
            step(model, what, *data[workload])
            step(model, what, *data[workload])
    best = {f"{m} {w}": float("inf") for m in models for w in WORKLOADS}
    for _ in range(rounds):
        for workload, (what, _, _) in WORKLOADS.items():
            for name, model in models.items():
                key = f"{name} {workload}"
                best[key] = min(best[key], step(model, what, *data[workload]))
    best["peak MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(arguments.rounds)))
        return
    info = machine()
    runs = {name: [] for name in SETTINGS}
    for repeat in range(arguments.repeats):
        for name, value in SETTINGS.items():
            environment = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC=value)
            output = subprocess.run(
                [sys.executable, "-m", f"benchmarks.{SCRIPT}",
                 "--child", "--rounds", str(arguments.rounds)],
                cwd=ROOT, env=environment, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(output.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{arguments.repeats}, {name}: done", flush=True)
    rows = []
    for name in SETTINGS:
        row = {"allocator": name}
        for key in runs[name][0]:
            values = [run[key] for run in runs[name]]
            row[key] = round(min(values) if key != "peak MiB" else max(values), 3)
        rows.append(row)
    speedup = {"allocator": "malloc / bfc"}
    for key in rows[0]:
        if key not in ("allocator", "peak MiB"):
            speedup[key] = round(rows[0][key] / rows[1][key], 2)
    rows.append(speedup)
    print_table(rows, list(rows[0]))
    path = write_json(SCRIPT, "allocator.json", {
        "machine": info, "repeats": arguments.repeats, "rounds": arguments.rounds,
        "note": "seconds: best over the child processes of each setting; peak MiB: the "
                "largest peak resident memory of a child (all models and workloads)",
        "results": rows, "runs": runs})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
