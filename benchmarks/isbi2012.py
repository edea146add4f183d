"""ISBI 2012 membrane segmentation: unet_cbam's attention ablation against a peer.

Trains every model on slices 00-23 (validation split taken from them, for
model selection only) with one shared budget (same patches, steps, batch
size, optimizer, loss and seeds, all through unet_cbam's training pipeline),
then predicts the held-out slices 24-29 at full 512x512 resolution through
predict.py's tiled inference and scores them.

Models:
  unet-none / unet-channel / unet-spatial / unet-cbam   the default unet_cbam
        configuration (what train.py builds with no model flags), varying only
        `attention`; unet-cbam is the default itself
  unet-cbam-blog          CBAM with the original snippet's bug (gates >= 0.5)
  sm-unet-resnet18        the peer: segmentation-models' own sm.Unet, resnet18
                          encoder, no pretrained weights
  unet-cbam-resnet18      unet_cbam with the same resnet18 encoder and CBAM skips

Reported per model (mean and standard deviation over seeds): membrane Dice
(mask value 0, the class that matters), cell Dice, mean IoU, pixel error,
pooled over the 6 test slices; parameters; training patches/s; inference
images/s at 512x512; peak resident memory; training time.

    python -m benchmarks.isbi2012            # full: 3 seeds, 600 steps of 8 patches of 128x128
    python -m benchmarks.isbi2012 --quick    # 1 seed, 150 steps: 8 minutes on 2 CPU cores
    python -m benchmarks.isbi2012 --set base_filters=32 --models unet-none unet-cbam
                                  # try another default: writes isbi2012-base_filters32.*
    python -m benchmarks.isbi2012 --keep-runs runs/isbi   # keep the run folders (notebooks)
    python -m benchmarks.isbi2012 --models unet-cbam --precisions float32 bfloat16
                                  # bfloat16's parity: writes isbi2012-float32-bfloat16.*

Writes benchmarks/results/isbi2012/isbi2012[-quick][-FIELDVALUE][-PRECISION...].json and .md, and a
plot of test membrane Dice against training time (.png). Each (model, seed) trains in a
fresh process, so memory and speed figures do not mix.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import ISBI, RESULTS, ROOT, build_peer, machine, peak_rss_mb, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem

TRAIN_SLICES = range(0, 24)
TEST_SLICES = range(24, 30)
CLASS_NAMES = ["membrane", "cell"]

#: name -> ModelConfig overrides of the default configuration (None: the peer).
MODELS = {
    "unet-none": {"attention": "none"},
    "unet-channel": {"attention": "channel"},
    "unet-spatial": {"attention": "spatial"},
    "unet-cbam": {},
    "unet-cbam-blog": {"cbam_variant": "blog"},
    "sm-unet-resnet18": None,
    "unet-cbam-resnet18": {"encoder": "resnet18"},
}
DEFAULT_MODEL = "unet-cbam"
#: The fields the models differ in: --set cannot change them.
COMPARED = {"attention", "cbam_variant", "encoder"}
#: What the pipeline records for the peer (its architecture comes from build_peer).
PEER_CONFIG = {"encoder": "resnet18", "attention": "none"}


def model_config_for(name: str, changes: dict | None = None):
    """The ModelConfig a benchmark model trains with (the peer's only records its encoder).

    `changes` (from --set, never a COMPARED field) alter the default
    configuration of every unet_cbam model.
    """
    from unet_cbam.config import ModelConfig

    overrides = MODELS[name]
    fields = PEER_CONFIG if overrides is None else {**(changes or {}), **overrides}
    return ModelConfig(**{"num_classes": 1, **fields})  # membranes against cells: binary


def parse_changes(items: list[str]) -> dict:
    """FIELD=VALUE strings (values in YAML) into checked ModelConfig changes."""
    import dataclasses

    import yaml

    from unet_cbam.config import ModelConfig

    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    changes = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or key not in fields - COMPARED:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields - COMPARED))}")
        changes[key] = yaml.safe_load(value)
    ModelConfig(**changes)  # fails here, before any training, on a bad value
    return changes


def link_slices(root: Path, indices) -> Path:
    """images/ and masks/ with symbolic links to ISBI slices (the data set is never copied)."""
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in indices:
            name = f"slice{index:02d}.png"
            (root / kind / name).symlink_to(ISBI / kind / name)
    return root


def model_label(name: str, precision: str) -> str:
    """A row's name: the model, with the precision unless it is the default (auto)."""
    return name if precision == "auto" else f"{name}-{precision}"


def child(label: str, seed: int, work: Path, budget: dict) -> dict:
    """Train one model with one seed, predict and score the test slices.

    ``label`` is a model name, or ``NAME@PRECISION`` to train and predict in that precision.
    """
    import keras

    from unet_cbam.config import DataConfig, InferenceConfig, RunConfig, TrainConfig
    from unet_cbam.inputs import list_inputs
    from unet_cbam.loading import load_run
    from unet_cbam.models import build_unet
    from unet_cbam.predict import BatchPredictor
    from unet_cbam.run import RunFolder
    from unet_cbam.training import train

    name, _, precision = label.partition("@")
    precision = precision or "auto"
    overrides = MODELS[name]
    model_config = model_config_for(name, budget.get("model_changes"))
    config = RunConfig(
        model=model_config,
        data=DataConfig(data=str(work / "train"), val_fraction=0.2,
                        patch_size=budget["patch_size"], class_names=CLASS_NAMES,
                        augmentation=budget["augmentation"]),
        train=TrainConfig(epochs=budget["epochs"], steps_per_epoch=budget["steps_per_epoch"],
                          batch_size=budget["batch_size"], learning_rate=budget["learning_rate"],
                          early_stopping_patience=0, seed=seed, precision=precision))

    batch_ends: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            batch_ends.append(None)  # epoch boundary: validation time is not training time

        def on_train_batch_end(self, batch, logs=None):
            batch_ends.append(time.perf_counter())

    name = model_label(name, precision)
    run_dir = Path(os.environ.get("ISBI_RUNS") or work) / f"{name}-seed{seed}"
    started = time.perf_counter()
    train(config, run_dir, progress=False, callbacks=[Timer()],
          build_model=build_peer if overrides is None else build_unet)
    train_seconds = time.perf_counter() - started
    steps, seconds = 0, 0.0
    for previous, current in zip(batch_ends, batch_ends[1:], strict=False):
        if previous is not None and current is not None:
            steps, seconds = steps + 1, seconds + current - previous

    run = load_run(run_dir)
    files = list_inputs(work / "test" / "images")
    inference = InferenceConfig(tile_size=512, precision=precision)
    predictor = BatchPredictor(run, inference, work / f"pred-{name}-{seed}")
    predictor.run_files(files[:1], progress=False)  # warm-up: tracing
    predictor = BatchPredictor(run, inference, work / f"out-{name}-{seed}")
    started = time.perf_counter()
    result = predictor.run_files(files, progress=False)
    predict_seconds = time.perf_counter() - started
    evaluation = predictor.evaluate(result, work / "test" / "masks")
    summary = evaluation.summary()
    history = RunFolder(run_dir).read_metrics()
    return {
        "model": name, "seed": seed, "precision": precision,
        "params": run.model.count_params(),
        "membrane_dice": summary["classes"]["membrane"]["pooled_dice"],
        "cell_dice": summary["classes"]["cell"]["pooled_dice"],
        "mean_iou": summary["pooled_mean_iou"],
        "pixel_error": 1.0 - summary["pooled_pixel_accuracy"],
        "val_mean_dice": history["mean_dice"],
        "val_membrane_dice": history["classes"]["membrane"]["dice"],
        "best_epoch": history["best_epoch"],
        "train_patches_per_s": steps * budget["batch_size"] / seconds if seconds else None,
        "train_seconds": train_seconds,
        "predict_images_per_s": len(files) / predict_seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def aggregate(results: list[dict]) -> list[dict]:
    order = list(MODELS)

    def place(label: str) -> int:  # the models' order; a model's precisions as run
        base, _, precision = label.rpartition("-")
        model = base if precision in ("float32", "bfloat16", "float16") else label
        return order.index(model) if model in order else len(order)

    rows = []
    for name in sorted(dict.fromkeys(r["model"] for r in results), key=place):
        runs = [r for r in results if r["model"] == name]
        row = {"model": name, "seeds": len(runs), "params": runs[0]["params"]}
        for key in ("membrane_dice", "cell_dice", "mean_iou", "pixel_error", "val_mean_dice",
                    "train_patches_per_s", "train_seconds", "predict_images_per_s",
                    "peak_rss_mb"):
            values = [r[key] for r in runs if r[key] is not None]
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: list[dict], budget: dict, info: dict) -> str:
    def pm(row, key, digits=3):
        std = row[f"{key}_std"]
        return f"{row[key]:.{digits}f} ± {std:.{digits}f}" if row["seeds"] > 1 else \
            f"{row[key]:.{digits}f}"
    from unet_cbam.tables import markdown_table

    headers = ["model", "params", "membrane Dice", "cell Dice", "mean IoU", "pixel error",
               "train patches/s", "predict 512² images/s", "peak memory MiB"]
    table = [[row["model"], f"{row['params'] / 1e6:.2f} M", pm(row, "membrane_dice"),
              pm(row, "cell_dice"), pm(row, "mean_iou"), pm(row, "pixel_error"),
              f"{row['train_patches_per_s']:.1f}", f"{row['predict_images_per_s']:.2f}",
              f"{row['peak_rss_mb']:.0f}"] for row in rows]
    lines = [markdown_table(table, headers)]
    seeds = rows[0]["seeds"] if rows else 0
    lines.append("")
    lines.append(
        f"Test slices 24-29 at 512x512 (pooled), mean ± standard deviation over {seeds} "
        f"seed(s). Budget: {budget['epochs'] * budget['steps_per_epoch']} steps of "
        f"{budget['batch_size']} random {budget['patch_size']}x{budget['patch_size']} patches "
        f"('{budget['augmentation']}' augmentation), Adam {budget['learning_rate']:g} with "
        f"warm-up and cosine decay, BCE + Dice; best epoch by validation mean Dice. "
        f"Machine: {info['cpu']}, {info['cpu_cores']} cores, GPUs: {info['gpus'] or 'none'}; "
        f"TensorFlow {info['packages']['tensorflow']}, Keras {info['packages']['keras']}; "
        f"commit {info['commit'][:12]}, {info['date']}.")
    if budget.get("model_changes"):
        lines.append("")
        lines.append("unet_cbam models changed from the default configuration: " + ", ".join(
            f"`{key}: {value}`" for key, value in budget["model_changes"].items()) + ".")
    return "\n".join(lines)


def plot(results: list[dict], rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axis = figure.subplots()
    for index, row in enumerate(rows):
        runs = [r for r in results if r["model"] == row["model"]]
        color = f"C{index}"
        axis.scatter([r["train_seconds"] / 60 for r in runs],
                     [r["membrane_dice"] for r in runs], color=color, alpha=0.35, s=18)
        axis.errorbar(row["train_seconds"] / 60, row["membrane_dice"],
                      yerr=row["membrane_dice_std"], xerr=row["train_seconds_std"] / 60,
                      fmt="o", color=color, capsize=3, label=row["model"])
    axis.set_xlabel("training time (minutes, includes validation)")
    axis.set_ylabel("test membrane Dice (slices 24-29)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    axis.set_title("ISBI 2012: membrane Dice against training time")
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 150 steps: a smoke test of the whole benchmark")
    parser.add_argument("--seeds", type=int, help="seeds per model (default 3; quick 1)")
    parser.add_argument("--steps", type=int, help="training steps (default 600; quick 150)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--augmentation", default="light")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["auto"],
                        choices=["auto", "float32", "bfloat16", "float16"],
                        help="train and predict each model in each precision, interleaved "
                             "seed by seed (e.g. float32 bfloat16 for the parity check)")
    parser.add_argument("--set", metavar="FIELD=VALUE", nargs="+", default=[],
                        help="change a ModelConfig field of every unet_cbam model, for "
                             "experiments on new defaults (e.g. --set base_filters=32)")
    parser.add_argument("--keep-runs", metavar="DIR", type=Path,
                        help="keep each run folder in DIR/MODEL-seedN (to open in the "
                             "notebooks); default: a temporary folder, deleted")
    parser.add_argument("--name",
                        help="result file name (default isbi2012[-quick][-FIELDVALUE...])")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    steps = arguments.steps or (150 if arguments.quick else 600)
    epochs = 6 if arguments.quick else 12
    budget = {"epochs": epochs, "steps_per_epoch": max(1, steps // epochs),
              "batch_size": arguments.batch_size, "patch_size": arguments.patch_size,
              "learning_rate": arguments.learning_rate, "augmentation": arguments.augmentation,
              "model_changes": parse_changes(arguments.set)}
    if arguments.child:
        name, seed, work = arguments.child
        print("RESULT " + json.dumps(child(name, int(seed), Path(work),
                                           json.loads(os.environ["ISBI_BUDGET"]))))
        return

    seeds = arguments.seeds or (1 if arguments.quick else 3)
    name = arguments.name or "-".join(
        ["isbi2012"] + (["quick"] if arguments.quick else [])
        + [f"{key}{value}" for key, value in budget["model_changes"].items()]
        + [precision for precision in arguments.precisions if precision != "auto"])
    info = machine()  # recorded before the runs: the commit they ran on
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        link_slices(work / "train", TRAIN_SLICES)
        link_slices(work / "test", TEST_SLICES)
        environment = {**os.environ, "ISBI_BUDGET": json.dumps(budget)}
        if arguments.keep_runs:
            taken = [f"{model_label(model, precision)}-seed{seed}"
                     for model in arguments.models for precision in arguments.precisions
                     for seed in range(seeds)
                     if (arguments.keep_runs
                         / f"{model_label(model, precision)}-seed{seed}").exists()]
            if taken:
                raise SystemExit(f"--keep-runs {arguments.keep_runs}: {', '.join(taken)} "
                                 "already exist; choose another folder")
            environment["ISBI_RUNS"] = str(arguments.keep_runs.resolve())
        for seed in range(seeds):
            for model, precision in itertools.product(arguments.models, arguments.precisions):
                started = time.perf_counter()
                completed = subprocess.run(
                    [sys.executable, "-m", f"benchmarks.{SCRIPT}",
                     "--child", f"{model}@{precision}", str(seed),
                     str(work)],
                    cwd=ROOT, capture_output=True, text=True, env=environment)
                lines = [line for line in completed.stdout.splitlines()
                         if line.startswith("RESULT ")]
                if completed.returncode != 0 or not lines:
                    print(completed.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{model} ({precision}) seed {seed} failed")
                result = json.loads(lines[-1][len("RESULT "):])
                results.append(result)
                print(f"{result['model']} seed {seed} ({result['params']:,} parameters): "
                      f"membrane Dice {result['membrane_dice']:.4f} "
                      f"(val mean Dice {result['val_mean_dice']:.4f}) in "
                      f"{time.perf_counter() - started:.0f} s", flush=True)

    rows = aggregate(results)
    table = markdown(rows, budget, info)
    print()
    print(table)
    (RESULTS / SCRIPT).mkdir(parents=True, exist_ok=True)
    (RESULTS / SCRIPT / f"{name}.md").write_text(table + "\n")
    write_json(SCRIPT, f"{name}.json", {"machine": info, "budget": budget, "seeds": seeds,
                                "default_model": DEFAULT_MODEL, "summary": rows,
                                "runs": results})
    plot(results, rows, RESULTS / SCRIPT / f"{name}.png")
    print(f"\nwritten to {RESULTS / SCRIPT / name}.json, .md and .png")


if __name__ == "__main__":
    main()
