"""Which runtime predicts faster on this CPU: Keras (TensorFlow) or onnxruntime?

predict.py's own prediction (``BatchPredictor.predict_raw``: tiling, batching,
blending, thresholding; no file I/O) of the 30 ISBI slices (512x512) already in
memory, with ``--runtime keras`` and ``--runtime onnxruntime``, interleaved in
one process after a warm-up pass of each, best of --rounds. The model is the
default configuration for 1-channel images (untrained: speed does not depend
on the weights).

    python -m benchmarks.runtime [--rounds 3] [--tta]

Prints a Markdown table and writes benchmarks/results/runtime/runtime.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import ISBI, machine, make_run, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

RUNTIMES = ("keras", "onnxruntime")


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tta", action="store_true")
    arguments = parser.parse_args()
    info = machine()
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
              for p in sorted((ISBI / "images").glob("*.png"))]
    with tempfile.TemporaryDirectory() as work:
        run = load_run(make_run(Path(work) / "run"))
        predictors = {name: BatchPredictor(run, InferenceConfig(runtime=name, tta=arguments.tta))
                      for name in RUNTIMES}
        best = dict.fromkeys(RUNTIMES, float("inf"))
        for predictor in predictors.values():  # warm-up
            predictor.predict_raw(images[0])
        for _ in range(arguments.rounds):
            for name, predictor in predictors.items():
                started = time.perf_counter()
                for image in images:
                    predictor.predict_raw(image)
                best[name] = min(best[name], time.perf_counter() - started)
    rows = [{"runtime": name, "images_per_s": round(len(images) / best[name], 3),
             "vs_keras": round(best["keras"] / best[name], 3)} for name in RUNTIMES]
    print_table(rows, ["runtime", "images_per_s", "vs_keras"])
    path = write_json(SCRIPT, "runtime.json", {"machine": info, "images": len(images),
                                       "size": "512x512", "tta": arguments.tta,
                                       "rounds": arguments.rounds, "results": rows})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
