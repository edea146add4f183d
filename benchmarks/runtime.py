"""Which runtime and precision predict fastest on this CPU, and do they agree?

predict.py's own prediction (``BatchPredictor.predict_raw``: tiling, batching,
blending, thresholding; no file I/O) of the 30 ISBI slices (512x512) already in
memory, for every runtime x precision this machine can run: Keras float32 (the
reference) and bfloat16, onnxruntime float32, OpenVINO float32, bfloat16 and
INT8 (bfloat16 only on a CPU with bfloat16 units: elsewhere it is emulated,
slower, and says nothing about the hardware; INT8 as ``--precision int8`` makes
it, calibrated and checked on the run's own images, ``int8_accepted`` saying
whether the check let it run). Interleaved in one process after a
warm-up pass of each, best of --rounds. Agreement with Keras float32: the
largest probability difference, and the share of confident pixels (probability
at least 0.05 from the threshold) whose label differs. The model is the
default configuration for 1-channel images, with weights from a short training
run on ISBI slices (untrained weights give probabilities near 0.5, where every
precision's rounding flips labels and agreement means nothing).

    python -m benchmarks.runtime [--rounds 3] [--tta] [--variants keras-float32 openvino-float32]
    python -m benchmarks.runtime --end-to-end 48 --label end-to-end

With ``--end-to-end N``, predict.py's whole batch job instead (``BatchPredictor.run_files``:
read each PNG, tile, predict, blend, threshold, write the mask) over N 512x512 images on
disk (the ISBI slices, mirrored for more), for every variant and for ``--runtime auto``
(which times the candidates on first use and caches its choice: made before the timed
rounds), interleaved, best of --rounds.

With ``--test-scores DATA_SET=RUN ...``, the accuracy of each variant instead: predict.py
``--truth`` over the data set's test split with each ``--runtime``/``--precision``, as a user
runs it, from the same trained run (``benchmarks.datasets``' splits and scored class: the
test Dice of the class of interest, LabelMeFacade's mean IoU), and the difference from
Keras float32. INT8 rows say whether the run's parity check accepted it (a refused INT8
predicts in float32) with the check's figures. Test splits are only scored, never chosen on.

    python -m benchmarks.runtime --test-scores kvasir=runs/kvasir isbi=runs/isbi --label scores

With ``--profile``, where one pass of the model over a batch of four 512x512 tiles goes
instead: for Keras float32 and each OpenVINO variant, its seconds and OpenVINO's own
per-node counters summed by node type into convolutions, layout (transposes, reorders,
padding, concatenation), pooling, reductions and activations (CBAM's pooling and gates) and
element-wise work; OpenVINO float32 and bfloat16 also from
tf2onnx's ONNX, the conversion predict.py used before 2026-12-07.

    python -m benchmarks.runtime --profile --label profile

Prints a Markdown table and writes benchmarks/results/runtime/runtime-LABEL.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import ISBI, machine, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

#: runtime-precision: (runtime, precision, the packages it needs)
VARIANTS = {
    "keras-float32": ("keras", "float32", ()),
    "keras-bfloat16": ("keras", "bfloat16", ()),
    "onnxruntime-float32": ("onnxruntime", "float32", ("onnxruntime", "tf2onnx")),
    "openvino-float32": ("openvino", "float32", ("openvino",)),
    "openvino-bfloat16": ("openvino", "bfloat16", ("openvino",)),
    "openvino-int8": ("openvino", "int8", ("openvino", "nncf")),
}
REFERENCE = "keras-float32"
#: A pixel is confident when its probability is at least this far from the threshold.
CONFIDENT = 0.05


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the variants this machine can measure, {left out: why})."""
    from unet_cbam.precision import bf16_units, cpu_flags

    bf16 = bool(bf16_units(cpu_flags())[0])  # units oneDNN may use (ONEDNN_MAX_CPU_ISA)
    chosen, skipped = [], {}
    for name in names:
        _, precision, packages = VARIANTS[name]
        missing = [p for p in packages if importlib.util.find_spec(p) is None]
        if missing:
            skipped[name] = f"{' and '.join(missing)} not installed"
        elif precision == "bfloat16" and not bf16:
            skipped[name] = "no bfloat16 units on this CPU (it would run emulated)"
        else:
            chosen.append(name)
    return chosen, skipped


def trained_run(folder: Path) -> Path:
    """The default model for 1-channel images, trained briefly on ISBI slices 0-7."""
    from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from unet_cbam.training import train

    data = folder / "data"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        for index in range(8):
            (data / kind / f"slice{index:02d}.png").symlink_to(
                ISBI / kind / f"slice{index:02d}.png")
    config = RunConfig(model=ModelConfig(num_classes=1, input_channels=1),
                       data=DataConfig(data=str(data), patch_size=256, val_fraction=0.25),
                       train=TrainConfig(epochs=3, steps_per_epoch=10, batch_size=4,
                                         precision="float32", seed=1))
    train(config, folder / "run", progress=False)
    return folder / "run"


#: --profile: OpenVINO's node types by what they do. By type alone: the names of the nodes
#: OpenVINO makes from a SavedModel are mostly its own (``Transpose_33186`` for a ReduceMean
#: of a CBAM module), so what belongs to CBAM cannot be told from them; its cost is measured
#: by benchmarks.attention_cost, the model with and without it.
CONVOLUTIONS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "FullyConnected",
                "MatMul", "Deconvolution"}
LAYOUT = {"Transpose", "Reorder", "Pad", "Concat", "Reshape", "Slice", "StridedSlice", "Split",
          "Gather", "Convert", "Broadcast", "Tile", "ShapeOf"}
POOLING = {"MaxPool", "AvgPool", "Interpolate"}
#: Reductions and activations: here CBAM's channel and spatial pooling and its sigmoid gates,
#: besides the head's activation (ReLUs are fused into the convolutions).
REDUCTIONS = {"ReduceMean", "ReduceMax", "ReduceSum", "Sigmoid", "Softmax", "Relu"}
CATEGORIES = ("convolution", "layout", "pooling", "reductions and activations",
              "element-wise and other")


def category(node_type: str) -> str:
    """Which of ``CATEGORIES`` an OpenVINO node's time counts under."""
    return ("convolution" if node_type in CONVOLUTIONS else "layout" if node_type in LAYOUT
            else "pooling" if node_type in POOLING
            else "reductions and activations" if node_type in REDUCTIONS
            else "element-wise and other")


def profile(run, names: list[str], rounds: int, work: Path) -> list[dict]:
    """Rows: where one pass over a batch of four 512x512 tiles goes, for Keras float32 and
    each OpenVINO variant: its best seconds over ``rounds`` interleaved (after a warm-up),
    and OpenVINO's own per-node counters (PERF_COUNT, a separately compiled copy) summed by
    ``category`` (node type), as shares. OpenVINO float32 and bfloat16 also from tf2onnx's ONNX
    (``conversion: onnx``), the conversion predict.py used before it converted the
    SavedModel: the difference is the transposes tf2onnx writes."""
    import numpy as np
    import openvino

    from unet_cbam.config import InferenceConfig
    from unet_cbam.inference import keras_predictor, openvino_predictor
    from unet_cbam.loading import in_precision
    from unet_cbam.quantize import int8_model
    from unet_cbam.runtime import OPENVINO_PRECISIONS, interleaved_best, to_onnx, to_openvino

    [model] = run.members
    model = in_precision(model, run.config.model, "float32")  # as predict.py converts it
    converted = {"savedmodel": to_openvino(model, work / "savedmodel"),
                 "onnx": openvino.convert_model(to_onnx(model, work / "model.onnx"))}
    models = {}  # (variant, conversion): (OpenVINO model, inference precision hint)
    for name in names:
        runtime, precision, _ = VARIANTS[name]
        if runtime != "openvino":
            continue
        if precision == "int8":  # quantised and checked as predict.py's defaults do
            inference = InferenceConfig()
            outcome = int8_model(run.path, model, run.scales[0], inference.tile_size,
                                 inference.overlap, inference.batch_size,
                                 inference.resolve_threshold(run.config.inference),
                                 converted["savedmodel"])
            if outcome.model is not None:
                models[name, "savedmodel"] = (outcome.model, "f32")
            continue
        for conversion, ov_model in converted.items():
            models[name, conversion] = (ov_model, OPENVINO_PRECISIONS[precision])
    tiles = np.random.default_rng(0).random((4, 512, 512, run.channels), dtype=np.float32)
    timed = {(REFERENCE, "keras"): keras_predictor(model)} | {
        key: openvino_predictor(ov_model, hint) for key, (ov_model, hint) in models.items()}
    _, best = interleaved_best(timed, tiles, rounds)
    rows = []
    for (name, conversion), seconds in best.items():
        row = {"variant": name, "conversion": conversion, "seconds_per_batch": round(seconds, 4),
               "images_per_s": round(len(tiles) / seconds, 2),
               "vs_keras_float32": round(best[REFERENCE, "keras"] / seconds, 3)}
        if conversion != "keras":
            ov_model, hint = models[name, conversion]
            compiled = openvino.Core().compile_model(ov_model, "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
                "PERF_COUNT": True})
            request = compiled.create_infer_request()
            request.infer({0: tiles})
            request.infer({0: tiles})
            spent = dict.fromkeys(CATEGORIES, 0.0)
            for node in request.profiling_info:
                spent[category(node.node_type)] += node.real_time.total_seconds()
            total = sum(spent.values())
            row |= {f"{key} %": round(100 * value / total, 1) for key, value in spent.items()}
        rows.append(row)
    return rows


def end_to_end(run, names: list[str], count: int, rounds: int, work: Path) -> list[dict]:
    """Rows: images/s of the batch job over ``count`` 512x512 PNGs for each variant and
    for ``auto`` (its choice recorded), best of ``rounds`` interleaved, after a warm-up."""
    import cv2

    from unet_cbam.config import InferenceConfig
    from unet_cbam.predict import BatchPredictor

    inputs = work / "inputs"
    inputs.mkdir()
    slices = sorted((ISBI / "images").glob("*.png"))
    for index in range(count):
        image = cv2.imread(str(slices[index % len(slices)]), cv2.IMREAD_UNCHANGED)
        if index >= len(slices):
            image = image[:, ::-1]
        cv2.imwrite(str(inputs / f"image{index:03d}.png"), image)
    files = sorted(inputs.glob("*.png"))
    choices = {name: VARIANTS[name][:2] for name in names} | {"auto": ("auto", "auto")}
    made = {}
    for name, (runtime, precision) in choices.items():
        started = time.perf_counter()
        made[name] = BatchPredictor(run, InferenceConfig(runtime=runtime, precision=precision),
                                    work / f"warm-{name}")
        made[name].setup_seconds = time.perf_counter() - started
        made[name].run_files(files[:4], progress=False)  # warm-up: tracing, thread pools
    best = dict.fromkeys(choices, float("inf"))
    for round_ in range(rounds):
        for name, predictor in made.items():
            predictor.output_dir = work / f"out-{name}-{round_}"
            started = time.perf_counter()
            result = predictor.run_files(files, progress=False)
            best[name] = min(best[name], time.perf_counter() - started)
            assert not result.failed, result.failed[0].error
    return [{"variant": name, "end_to_end_images_per_s": round(count / best[name], 3),
             "vs_keras_float32": round(best[REFERENCE] / best[name], 3),
             "setup_s": round(made[name].setup_seconds, 1),
             "runs_on": f"{made[name].runtime} {made[name].precision}"}
            for name in choices]


def test_scores(runs: dict[str, Path], names: list[str], work: Path) -> list[dict]:
    """Rows: each data set's test score with each variant, predicted by predict.py from
    its trained run, and the difference from Keras float32."""
    import json

    from benchmarks.datasets import DATA_SETS, SHARED, isbi_split
    from benchmarks.datasets import run as run_command

    rows = []
    for data_set, run in runs.items():
        scored = DATA_SETS[data_set][3]
        test = (isbi_split(work / "isbi-data")[1] if data_set == "isbi"
                else SHARED / DATA_SETS[data_set][1])
        scores = {}
        for name in names:
            runtime, precision, _ = VARIANTS[name]
            output = work / f"{data_set}-{name}"
            seconds = run_command(
                [sys.executable, "predict.py", "--model", str(run), "--input",
                 str(test / "images"), "--truth", str(test / "masks"), "--output",
                 str(output), "--runtime", runtime, "--precision", precision, "--quiet"],
                work / f"{data_set}.log")
            summary = json.loads((output / "evaluation.json").read_text())
            scores[name] = (summary["classes"][scored]["pooled_dice"] if scored
                            else summary["pooled_mean_iou"])
            row = {"data_set": data_set, "variant": name, "scored": scored or "mean IoU",
                   "test_score": round(scores[name], 5), "test_images": summary["images"],
                   "predict_s": round(seconds, 1)}
            if precision == "int8":
                checks = [json.loads(path.read_text())
                          for path in sorted(Path(run).glob("**/int8/*/check.json"))]
                row["int8_accepted"] = bool(checks) and all(c["accepted"] for c in checks)
                row["int8_check"] = checks
            rows.append(row)
        for row in rows:
            if row["data_set"] == data_set:
                row["vs_keras_float32"] = round(row["test_score"] - scores[REFERENCE], 5) + 0.0
    return rows


def main(argv: list[str] | None = None) -> None:
    import cv2
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--label", default="all", help="results file: runtime-LABEL.json")
    parser.add_argument("--end-to-end", type=int, metavar="N",
                        help="time predict.py's batch job over N images on disk instead")
    parser.add_argument("--test-scores", nargs="+", metavar="DATA_SET=RUN",
                        help="score each variant on these trained runs' test splits instead")
    parser.add_argument("--profile", action="store_true",
                        help="where one pass of the model goes, by OpenVINO's node counters, "
                             "instead")
    arguments = parser.parse_args(argv)
    info = machine()
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    names, skipped = available(sorted(set(arguments.variants) | {REFERENCE},
                                      key=list(VARIANTS).index))
    for name, why in skipped.items():
        print(f"{name}: left out ({why})")
    if arguments.test_scores:
        runs = dict(item.split("=", 1) for item in arguments.test_scores)
        with tempfile.TemporaryDirectory() as work:
            rows = test_scores({k: Path(v) for k, v in runs.items()}, names, Path(work))
        print_table(rows, ["data_set", "variant", "scored", "test_score", "vs_keras_float32",
                           "int8_accepted"])
        path = write_json(SCRIPT, f"runtime-{arguments.label}.json", {
            "machine": info, "runs": runs, "left_out": skipped, "results": rows})
        print(f"written: {path}")
        return
    if arguments.profile:
        with tempfile.TemporaryDirectory() as work:
            rows = profile(load_run(trained_run(Path(work))), names, arguments.rounds,
                           Path(work))
        print_table(rows, ["variant", "conversion", "images_per_s", "vs_keras_float32",
                           *(f"{key} %" for key in CATEGORIES)])
        path = write_json(SCRIPT, f"runtime-{arguments.label}.json", {
            "machine": info, "batch": "4x512x512", "rounds": arguments.rounds,
            "left_out": skipped, "results": rows})
        print(f"written: {path}")
        return
    if arguments.end_to_end:
        with tempfile.TemporaryDirectory() as work:
            rows = end_to_end(load_run(trained_run(Path(work))), names, arguments.end_to_end,
                              arguments.rounds, Path(work))
        print_table(rows, ["variant", "end_to_end_images_per_s", "vs_keras_float32",
                           "runs_on", "setup_s"])
        path = write_json(SCRIPT, f"runtime-{arguments.label}.json", {
            "machine": info, "images": arguments.end_to_end, "size": "512x512",
            "rounds": arguments.rounds, "left_out": skipped, "results": rows})
        print(f"written: {path}")
        return
    images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
              for p in sorted((ISBI / "images").glob("*.png"))]
    with tempfile.TemporaryDirectory() as work:
        run = load_run(trained_run(Path(work)))
        predictors = {}
        for name in names:
            runtime, precision, _ = VARIANTS[name]
            predictors[name] = BatchPredictor(run, InferenceConfig(
                runtime=runtime, precision=precision, tta=arguments.tta))
        outputs = {name: [p.predict_raw(image, keep_probabilities=True)
                          for image in images[:4]]
                   for name, p in predictors.items()}  # warm-up, and the agreement check
        best = dict.fromkeys(names, float("inf"))
        for _ in range(arguments.rounds):
            for name, predictor in predictors.items():
                started = time.perf_counter()
                for image in images:
                    predictor.predict_raw(image)
                best[name] = min(best[name], time.perf_counter() - started)
        threshold = predictors[REFERENCE].threshold
    rows = []
    for name in names:
        difference, flipped, confident = 0.0, 0, 0
        for (labels, probabilities), (ref_labels, ref_probabilities) in zip(
                outputs[name], outputs[REFERENCE], strict=True):
            difference = max(difference, float(np.abs(probabilities - ref_probabilities).max()))
            clear = np.abs(ref_probabilities[..., -1] - threshold) >= CONFIDENT
            flipped += int((labels[clear] != ref_labels[clear]).sum())
            confident += int(clear.sum())
        int8 = getattr(predictors[name], "int8", None)
        rows.append({"variant": name, "images_per_s": round(len(images) / best[name], 3),
                     **({"int8_accepted": all(int8)} if int8 is not None else {}),
                     "vs_keras_float32": round(best[REFERENCE] / best[name], 3),
                     "max_probability_difference": round(difference, 5),
                     "confident_pixels_differing": flipped,
                     "confident_pixels": confident})
    print_table(rows, ["variant", "images_per_s", "vs_keras_float32",
                       "max_probability_difference", "confident_pixels_differing",
                       "int8_accepted"])
    path = write_json(SCRIPT, f"runtime-{arguments.label}.json", {
        "machine": info, "images": len(images), "size": "512x512", "tta": arguments.tta,
        "rounds": arguments.rounds, "left_out": skipped, "results": rows})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
