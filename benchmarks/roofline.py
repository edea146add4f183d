"""How close the model comes to this machine's peak: matmul and 3x3-conv GFLOP/s, the
default model's GFLOP, and the share of the matching peak that prediction and training reach.

In one process, each measurement interleaved with its other precision or runtime, best of
--rounds after a warm-up:

- peaks: ``tf.matmul`` of 2048x2048 and a 3x3 convolution of 64 to 64 channels on 4x256x256,
  in float32 and bfloat16 (GFLOP/s = 2 x multiply-adds / s);
- the default model for 1-channel images: forward GFLOP per 512x512 image (TensorFlow's
  profiler on the traced forward pass);
- prediction: predict.py's own tiling and batching (``BatchPredictor.predict_raw``, no file
  I/O) of --images ISBI slices (512x512), for Keras float32, Keras bfloat16 and onnxruntime
  float32;
- training: ``train_on_batch`` of 8x256x256 patches in float32 and mixed bfloat16;
- the fraction of the conv peak of the same precision each reaches (training counts 3x the
  forward FLOPs: forward, and backward to the inputs and the weights).

    python -m benchmarks.roofline [--rounds 3] [--images 8]

Prints a Markdown table and writes benchmarks/results/roofline/roofline.json. On a CPU without
bfloat16 units (AVX512_BF16, AMX), TensorFlow emulates bfloat16 and its rows are slow; the
JSON records the CPU's features.
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

PRECISIONS = ("float32", "bfloat16")


def best_of(functions: dict, rounds: int) -> dict[str, float]:
    """Seconds of each callable, interleaved, best of ``rounds`` after one warm-up call."""
    for function in functions.values():
        function()
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def peaks(rounds: int) -> dict[str, dict[str, float]]:
    import tensorflow as tf

    n, (batch, side, channels) = 2048, (4, 256, 64)
    work = {"matmul": 2 * n ** 3, "conv3x3": 2 * 9 * channels * channels * side * side * batch}
    functions = {}
    for precision in PRECISIONS:
        dtype = tf.as_dtype(precision)
        a = tf.random.normal((n, n), dtype=tf.float32)
        x = tf.random.normal((batch, side, side, channels))
        kernel = tf.random.normal((3, 3, channels, channels))
        a, x, kernel = (tf.cast(t, dtype) for t in (a, x, kernel))
        matmul = tf.function(lambda a=a: tf.matmul(a, a))
        conv = tf.function(lambda x=x, k=kernel: tf.nn.conv2d(x, k, 1, "SAME"))
        functions[("matmul", precision)] = lambda f=matmul: f().numpy()
        functions[("conv3x3", precision)] = lambda f=conv: f().numpy()
    seconds = best_of(functions, rounds)
    return {kind: {precision: work[kind] / seconds[(kind, precision)] / 1e9
                   for precision in PRECISIONS} for kind in work}


def forward_gflop(side: int) -> float:
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    from unet_cbam.config import ModelConfig
    from unet_cbam.models import build_unet

    model = build_unet(ModelConfig(num_classes=1, input_channels=1))
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, side, side, 1), tf.float32)).graph
    options = option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return model_analyzer.profile(graph, options=options).total_float_ops / 1e9


def prediction(images: list, rounds: int) -> dict[str, float]:
    """images/s of predict.py's tiling: (runtime, precision) -> images/s."""
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    with tempfile.TemporaryDirectory() as work:
        run = load_run(make_run(Path(work) / "run"))
        predictors = {
            ("keras", "float32"): BatchPredictor(run, InferenceConfig(precision="float32")),
            ("keras", "bfloat16"): BatchPredictor(run, InferenceConfig(precision="bfloat16")),
            ("onnxruntime", "float32"): BatchPredictor(
                run, InferenceConfig(precision="float32", runtime="onnxruntime")),
        }

        def run_all(predictor):
            for image in images:
                predictor.predict_raw(image)
        seconds = best_of({key: (lambda p=p: run_all(p)) for key, p in predictors.items()},
                          rounds)
    return {key: len(images) / value for key, value in seconds.items()}


def training(rounds: int, batch: int = 8, side: int = 256) -> dict[str, float]:
    """patches/s of train_on_batch: precision -> patches/s."""
    import keras
    import numpy as np

    from unet_cbam.config import ModelConfig
    from unet_cbam.models import build_unet
    from unet_cbam.precision import POLICIES

    rng = np.random.default_rng(0)
    x = rng.random((batch, side, side, 1), dtype=np.float32)
    y = (rng.random((batch, side, side, 1)) > 0.5).astype(np.float32)
    models = {}
    for precision in PRECISIONS:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(POLICIES[precision])
        try:
            model = build_unet(ModelConfig(num_classes=1, input_channels=1))
            model.compile(optimizer="adam", loss="binary_crossentropy")
        finally:
            keras.config.set_dtype_policy(previous)
        models[precision] = model
    seconds = best_of({p: (lambda m=m: m.train_on_batch(x, y)) for p, m in models.items()},
                      rounds)
    return {precision: batch / value for precision, value in seconds.items()}


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8, help="ISBI slices per prediction pass")
    arguments = parser.parse_args()
    info = machine()
    peak = peaks(arguments.rounds)
    for kind, values in peak.items():
        print(f"{kind}: " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in values.items()),
              flush=True)
    gflop_512, gflop_256 = forward_gflop(512), forward_gflop(256)
    print(f"forward: {gflop_512:.2f} GFLOP per 512x512 image", flush=True)
    images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
              for p in sorted((ISBI / "images").glob("*.png"))[:arguments.images]]
    predicted = prediction(images, arguments.rounds)
    trained = training(arguments.rounds)
    rows = []
    for (runtime, precision), per_second in predicted.items():
        achieved = per_second * gflop_512
        rows.append({"work": "predict 512x512", "runtime": runtime, "precision": precision,
                     "per_s": round(per_second, 3),
                     "vs_float32": round(per_second / predicted[("keras", "float32")], 3),
                     "gflop_s": round(achieved, 1),
                     "of_conv_peak": round(achieved / peak["conv3x3"][precision], 3)})
    for precision, per_second in trained.items():
        achieved = per_second * 3 * gflop_256
        rows.append({"work": "train 8x256x256", "runtime": "keras", "precision": precision,
                     "per_s": round(per_second, 3),
                     "vs_float32": round(per_second / trained["float32"], 3),
                     "gflop_s": round(achieved, 1),
                     "of_conv_peak": round(achieved / peak["conv3x3"][precision], 3)})
    print()
    print_table(rows, list(rows[0]))
    path = write_json(SCRIPT, "roofline.json", {
        "machine": info,
        "peaks_gflop_s": peak,
        "forward_gflop": {"512x512": gflop_512, "256x256": gflop_256},
        "rows": rows,
        "settings": {"rounds": arguments.rounds, "prediction_images": len(images),
                     "model": "default, 1 input channel, untrained",
                     "training_flops": "3 x forward"},
    })
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
