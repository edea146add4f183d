"""Multi-worker training on one machine: 2 workers of one CPU thread each against 1.

Each configuration runs as separate processes on localhost (TF_CONFIG, 127.0.0.1 ports),
each limited to one TensorFlow thread (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS = 1),
through train.py's own multi-worker loop (``unet_cbam.distribute.DistributedLoop``: the
model's train_step under MultiWorkerMirroredStrategy, gradients all-reduced over gRPC) on the
default model for 1-channel images with the default loss and metrics. The global batch is
the same in both (``--batch-size`` is global): each of 2 workers computes half of it. Batches
are fixed tensors in memory, so the figures are compute and communication, not the input
pipeline. Rounds alternate between the configurations; the best step time of each counts.

    python -m benchmarks.multiworker [--rounds 3] [--steps 12] [--patch 128] [--batch 8]

A third configuration is the reference: one process without a strategy, Keras'
``train_on_batch`` (fit's step) of the same model, loss and metrics on one thread.

Prints a Markdown table and writes benchmarks/results/multiworker/multiworker.json. One
machine shares its cores, memory bandwidth and caches between the workers, so this measures
the loop's overhead and a lower bound of the scaling, not what separate machines give.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import machine, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

ROOT = Path(__file__).resolve().parents[1]


def worker(arguments: argparse.Namespace) -> None:
    """One worker: time ``--steps`` training steps after two of warm-up; the chief prints."""
    import numpy as np
    import tensorflow as tf

    from unet_cbam.config import ModelConfig
    from unet_cbam.distribute import DistributedLoop, describe_cluster, make_strategy
    from unet_cbam.losses import SegmentationLoss
    from unet_cbam.metrics import segmentation_metrics
    from unet_cbam.models import build_unet

    reference = arguments.workers == 0  # fit's own step, one process, no strategy
    strategy = tf.distribute.get_strategy() if reference else make_strategy("multiworker", 120)
    cluster = None if reference else describe_cluster()
    rng = np.random.default_rng(0 if reference else cluster.task_index)
    batch = arguments.batch // (1 if reference else cluster.num_workers)
    images = rng.random((batch, arguments.patch, arguments.patch, 1), np.float32)
    labels = rng.integers(0, 2, (batch, arguments.patch, arguments.patch))
    targets = np.concatenate([np.eye(2, dtype=np.float32)[labels],
                              np.ones(labels.shape + (1,), np.float32)], axis=-1)
    with strategy.scope():
        model = build_unet(ModelConfig(num_classes=1, input_channels=1))
        model.compile("adam", SegmentationLoss("bce+dice"),
                      metrics=segmentation_metrics(["background", "foreground"]))
    if reference:
        def step():
            model.train_on_batch(images, targets)
    else:
        step = DistributedLoop(model, strategy, lambda context: tf.data.Dataset.from_tensors(
            (images, targets)).repeat()).train_step
    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(arguments.steps):
        step()  # returns when the step (its all-reduce included) is done
    seconds = (time.perf_counter() - started) / arguments.steps
    if reference or cluster.is_chief:
        print("RESULT " + json.dumps({"step_s": seconds}), flush=True)


def launch(workers: int, arguments: argparse.Namespace) -> dict:
    """Run ``workers`` worker processes (0: the single-process reference) and return the
    chief's result."""
    reference = workers == 0
    workers = max(workers, 1)
    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    processes = []
    for index in range(workers):
        env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
                   CUDA_VISIBLE_DEVICES="", TF_CONFIG=json.dumps({
                       "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}}))
        if reference:
            del env["TF_CONFIG"]
        processes.append(subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{SCRIPT}",
             "--worker", str(0 if reference else workers),
             "--steps", str(arguments.steps), "--patch", str(arguments.patch), "--batch",
             str(arguments.batch)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=1800)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode:
            raise RuntimeError(f"a worker failed:\n{output[-3000:]}")
    line = next(line for line in outputs[0].splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker is not None:
        arguments.workers = arguments.worker
        worker(arguments)
        return
    info = machine()
    best: dict[int, dict] = {}
    configurations = (0, 1, 2)  # 0: fit's train_on_batch in one process, no strategy
    for round_ in range(arguments.rounds):
        for workers in configurations:
            result = launch(workers, arguments)
            print(f"round {round_ + 1}, {workers or 'reference'} worker(s): step "
                  f"{result['step_s']:.3f} s", flush=True)
            if workers not in best or result["step_s"] < best[workers]["step_s"]:
                best[workers] = result
    one = best[1]["step_s"]
    rows = [{"setup": "train_on_batch, no strategy" if workers == 0 else
             f"multiworker, {workers} worker(s)", "threads_each": 1,
             "per_worker_batch": arguments.batch // max(workers, 1),
             "step_s": round(best[workers]["step_s"], 3),
             "patches_per_s": round(arguments.batch / best[workers]["step_s"], 2),
             "speedup_vs_1_worker": round(one / best[workers]["step_s"], 3),
             "efficiency": round(one / best[workers]["step_s"] / max(workers, 1), 3)}
            for workers in configurations]
    print_table(rows, list(rows[0]))
    path = write_json(SCRIPT, "multiworker.json", {
        "machine": info, "rows": rows,
        "settings": {"rounds": arguments.rounds, "timed_steps": arguments.steps,
                     "patch": arguments.patch, "global_batch": arguments.batch,
                     "model": "default, 1 input channel",
                     "step": "mean over the timed steps, after 2 of warm-up"},
    })
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
