"""What attention costs: the default model with attention none against CBAM placements.

In one process, interleaved, after a warm-up of each variant:
``model.predict_on_batch`` of 4 images of 512x512, and ``train_on_batch`` of 8 patches
of 256x256 and of 128x128, for the default model for 1-channel images
(untrained: speed does not depend on the weights). Each round runs every
workload once per variant, the variants in a fresh random order. The
overhead is given two ways against attention none: best time over best time
(over all rounds), and the median over the rounds of each round's own ratio
(the variant's time over none's in the same round), which a machine whose
speed drifts between rounds (a shared host) moves far less. Target (issue
10): CBAM on the skips at most 5 % slower in all three.

    python -m benchmarks.attention_cost [--rounds 20] [--variants none cbam ...] [--label L]

Prints a Markdown table and writes benchmarks/results/attention_cost/attention_cost.json
(attention_cost-L.json with --label).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import machine, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

#: name: ModelConfig fields
VARIANTS = {
    "none": {"attention": "none"},
    # The default: x + CBAM(x) on skips 1-3 since 2026-12-03 (on every skip before; the
    # paper's CBAM(x) alone before 2026-12-02). The other names keep their meaning.
    "cbam": {},
    "cbam-all": {"attention_levels": "all"},  # x + CBAM(x) on every skip
    "cbam-no-identity": {"attention_identity": False, "attention_levels": "all"},
    "cbam-deep": {"attention_levels": [2, 3]},
    "cbam-skips123": {"attention_levels": [1, 2, 3]},
    "cbam-skip3": {"attention_levels": [3]},
    "cbam-decoder": {"attention_position": "decoder", "attention_levels": "all"},
    "cbam-encoder": {"attention_position": "encoder", "attention_levels": "all"},
}
#: name: (what, batch, side)
WORKLOADS = {"predict 4x512": ("predict", 4, 512), "train 8x256": ("train", 8, 256),
             "train 8x128": ("train", 8, 128)}


def build(fields: dict):
    import keras

    from unet_cbam.config import ModelConfig
    from unet_cbam.models import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet(ModelConfig(num_classes=1, input_channels=1, **fields))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def step(model, what: str, x, y) -> float:
    started = time.perf_counter()
    if what == "predict":
        # predict_on_batch, not model.predict: on the 2-core AVX-512 machine Keras's
        # predict loop stalled about one batch's time (0.3 s) in a variable share of the
        # calls (4 to 19 of 30 by variant), never in predict_on_batch; predict.py calls
        # the model through its own tf.function, as this does.
        model.predict_on_batch(x)
    else:
        model.train_on_batch(x, y)
    return time.perf_counter() - started


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--label", help="results file: attention_cost-LABEL.json (default: "
                                        "attention_cost.json)")
    arguments = parser.parse_args()
    info = machine()
    rng = np.random.default_rng(0)
    data = {name: (rng.random((batch, side, side, 1), dtype=np.float32),
                   (rng.random((batch, side, side, 1)) > 0.5).astype(np.float32))
            for name, (_, batch, side) in WORKLOADS.items()}
    models = {name: build(VARIANTS[name]) for name in arguments.variants}
    times = {(v, w): [] for v in models for w in WORKLOADS}
    for model in models.values():  # warm-up: traces every graph once
        for workload, (what, _, _) in WORKLOADS.items():
            step(model, what, *data[workload])
            step(model, what, *data[workload])
    order = list(models)
    for _ in range(arguments.rounds):
        for workload, (what, _, _) in WORKLOADS.items():
            rng.shuffle(order)
            for name in order:
                times[name, workload].append(step(models[name], what, *data[workload]))
    rows = []
    for name, model in models.items():
        row = {"variant": name, "params": model.count_params()}
        for workload in WORKLOADS:
            seconds = min(times[name, workload])
            row[f"{workload} s"] = round(seconds, 4)
            if "none" in models:
                base = times["none", workload]
                row[f"{workload} overhead %"] = round(100 * (seconds / min(base) - 1), 1)
                ratios = np.array(times[name, workload]) / np.array(base)
                row[f"{workload} paired %"] = round(100 * (float(np.median(ratios)) - 1), 1)
        rows.append(row)
    columns = ["variant", "params"] + [c for c in rows[0] if c not in ("variant", "params")]
    print_table(rows, columns)
    name = f"attention_cost-{arguments.label}.json" if arguments.label else "attention_cost.json"
    path = write_json(SCRIPT, name, {
        "machine": info, "rounds": arguments.rounds,
        "variants": {n: VARIANTS[n] for n in models}, "results": rows,
        "seconds": {f"{v} | {w}": [round(t, 4) for t in ts] for (v, w), ts in times.items()}})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
