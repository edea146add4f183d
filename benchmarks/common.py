"""Shared by the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

from unet_cbam.precision import cpu_model

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared" / "datasets" / "isbi2012-membrane"
RESULTS = ROOT / "benchmarks" / "results"


#: Environment variables that change what TensorFlow runs on the CPU (recorded when set):
#: ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 CPU stands in for an AVX2-only one.
ENVIRONMENT = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS",
               "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "CUDA_VISIBLE_DEVICES")

PACKAGES = ("tensorflow", "keras", "numpy", "albumentations", "opencv-python-headless",
            "segmentation-models", "tifffile", "onnxruntime", "openvino", "nncf", "unet_cbam")


def cpu_features() -> list[str]:
    """The vector and matrix extensions that decide TensorFlow's CPU speed."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def machine() -> dict:
    """Where and with what a result was measured: commit, date, CPU, GPUs, versions."""
    from importlib.metadata import PackageNotFoundError, version

    import tensorflow as tf

    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_cores": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "packages": versions,
        "environment": {name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(script: str, name: str | Path, payload: dict) -> Path:
    """``benchmarks/results/SCRIPT/NAME`` (or the absolute path given), with the machine
    recorded first: each script's results in its own folder (``python -m benchmarks.index``
    lists them)."""
    path = RESULTS / script / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if "machine" not in payload:
        payload = {"machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def benchmark_number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A Markdown table, so it can be pasted into the README."""
    from unet_cbam.tables import markdown_table

    print(markdown_table([[row.get(column) for column in columns] for row in rows], columns,
                         float_format=benchmark_number))


def rule_name(confidence: float) -> str:
    """How the post-processing tuner's rule (``postprocess.tune(confidence=)``) is named
    in result tables."""
    return "any gain" if confidence <= 0 else f"confidence {confidence:g}"


def run_validation_pairs(run_dir: Path, every_image: bool = False, binary: bool = False):
    """(pairs, class names, fingerprint, tune_on) of a trained single run: its best model
    on its validation images, whole, as training's tuning predicts them (at most
    training's bound of them, evenly spread, unless ``every_image``). ``binary``: refuse
    a model with more than one output before predicting anything."""
    import keras

    from unet_cbam.data.prepare import prepare_data
    from unet_cbam.run import RunFolder
    from unet_cbam.validation import validation_predictions

    run = RunFolder(run_dir)
    config = run.config
    if binary and config.model.num_classes != 1:
        raise SystemExit(f"{run_dir}: not a binary model; this study tunes a threshold")
    data = prepare_data(config, split=run.read_split(), progress=False)
    model = keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
    pairs = validation_predictions(model, data.val, config.model.divisor,
                                   *([len(data.val)] if every_image else []))
    return pairs, list(data.class_names), data.fingerprint, config.train.tune_on


def make_run(folder: Path) -> Path:
    """A run folder with the default model for 1-channel images (untrained)."""
    from unet_cbam.config import DataConfig, ModelConfig, RunConfig
    from unet_cbam.models import build_unet
    from unet_cbam.run import RunFolder

    model_config = ModelConfig(num_classes=1, input_channels=1)
    run = RunFolder(folder)
    run.write_config(RunConfig(model=model_config,
                               data=DataConfig(mask_encoding="binary", mask_values=[0, 255])))
    build_unet(model_config).save(run.model_path)
    return folder


def build_peer(model_config):
    """The peer: segmentation-models' own ``sm.Unet`` with a randomly initialised resnet18
    encoder, for ``model_config``'s input channels and classes (a sigmoid for one class, as
    ``build_unet``)."""
    from unet_cbam.segmentation_models import sm

    classes = model_config.num_classes
    return sm.Unet("resnet18", encoder_weights=None, classes=classes,
                   activation="sigmoid" if classes == 1 else "softmax",
                   input_shape=(None, None, model_config.input_channels))
