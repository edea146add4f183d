"""Batch prediction: a run's model over a folder of images of any size.

One mask per input, in the training masks' encoding; optional probability
maps, overlays and attention figures; a summary CSV. A bad input is reported
and skipped; existing outputs are kept (resume) unless ``overwrite``; every
file is written under a temporary name and renamed; inputs are never
overwritten: an output folder that holds any input is refused. ``shard =
(i, n)`` takes every n-th file of the sorted list, so n machines can share
one folder. Outputs mirror the input tree: ``a/x.png``
and ``b/x.png`` under the input folder become ``OUTPUT/a/x.png`` and
``OUTPUT/b/x.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from unet_cbam.attention import attention_layers, attention_maps
from unet_cbam.config import InferenceConfig, RunConfig
from unet_cbam.data.io import (
    IGNORE_LABEL,
    ImageReadError,
    MaskCodec,
    Normalization,
    is_image_file,
    preprocess,
    read_mask,
    read_raw,
    resize_image,
    scaled_size,
    to_float,
    write_image,
    write_mask,
)
from unet_cbam.data.verify import Sample
from unet_cbam.evaluate import Evaluation, evaluate_instances, evaluate_pairs
from unet_cbam.files import atomic_write, remove_stale_temporaries, write_text
from unet_cbam.inference import (
    ensemble_predictor,
    keras_predictor,
    onnx_predictor,
    predictive_entropy,
    probabilities_to_labels,
    resampled_predict,
    round_up,
    sliding_window_rows,
    with_tta,
)
from unet_cbam.instances import label_instances, min_distance_for
from unet_cbam.postprocess import postprocess
from unet_cbam.precision import POLICIES, choose_precision
from unet_cbam.run import MODEL_FILE, RunFolder
from unet_cbam.visualize import add_legend, class_colors, overlay, plot_attention

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["file", "status", "mask", "height", "width", "seconds",
                   "foreground_fraction", "error"]


@dataclass
class LoadedRun:
    """A model with what is needed to preprocess for it and write its masks."""

    model: keras.Model
    config: RunConfig
    codec: MaskCodec
    class_names: list[str]
    path: Path
    #: Every model whose probabilities are averaged: the folds of a cross-validation run,
    #: or just ``model``. ``model`` is the first (attention maps come from it).
    members: list[keras.Model] = field(default_factory=list)
    #: The resolution each member was trained at (``data.scale``; 1 for older runs).
    scales: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [self.model]
        if not self.scales:
            self.scales = [self.config.data.scale or 1.0] * len(self.members)

    @property
    def channels(self) -> int:
        return self.config.model.input_channels

    @property
    def normalization(self) -> Normalization:
        """The run's frozen intensity normalisation (bit depth for older runs)."""
        return Normalization.from_config(self.config.data.normalization)

    def preprocess(self, raw: np.ndarray, path: str | Path = "", standardize: bool = True
                   ) -> np.ndarray:
        """What training fed the model, for an image as stored (see ``io.preprocess``)."""
        return preprocess(raw, self.channels, path, self.normalization, standardize)


def load_run(path: str | Path) -> LoadedRun:
    """A run folder, or a ``.keras`` file with the run's config.yaml beside it, or a
    cross-validation folder (``fold_0`` ... from ``train.py --folds``): its folds'
    models, averaged."""
    path = Path(path)
    if path.is_dir() and not (path / MODEL_FILE).exists() and RunFolder(path).folds():
        return _load_folds(RunFolder(path))
    model_path = path / MODEL_FILE if path.is_dir() else path
    run = RunFolder(model_path.parent)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found")
    if not run.exists():
        raise FileNotFoundError(
            f"{run.config_path}: not found; predict.py needs the run's config.yaml beside the "
            "model (it holds the preprocessing and the mask encoding)")
    if not zipfile.is_zipfile(model_path):
        raise ValueError(f"{model_path}: not a readable .keras model file (corrupt, truncated "
                         "or another format)")
    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises TypeError, ValueError, OSError ...
        raise ValueError(f"{model_path}: cannot load the model in safe mode: "
                         f"{_one_line(error)}") from None
    return LoadedRun(model, run.config, run.codec, run.class_names, run.path)


def to_onnx(model: keras.Model, path: Path) -> str:
    """``model`` converted to ONNX at ``path`` (any height and width), for onnxruntime."""
    import tensorflow as tf

    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ValueError(f"runtime onnxruntime needs the export extra (pip install "
                         f"'unet_cbam[export]'): {error}") from None
    shape = (None, *model.inputs[0].shape[1:])  # a model's fixed input size stays fixed
    model.export(str(path), format="onnx", verbose=False,
                 input_signature=[tf.TensorSpec(shape, tf.float32)])
    return str(path)


#: onnxruntime's images/s over Keras' in float32 on a CPU, measured by benchmarks/runtime.py
#: (predict.py's tiling, default model, 512x512): 1.30 on this project's 2-core AMD EPYC
#: (AVX2), 1.25 on an AVX-512 EPYC. No GPU build of onnxruntime is installed by the extra.
ONNXRUNTIME_CPU_SPEEDUP = 1.30


def choose_runtime(requested: str, precision: str, gpus: int | None = None
                   ) -> tuple[str, str]:
    """(keras | onnxruntime, reason) for ``requested`` (keras, onnxruntime or auto).

    auto's rule, from measurements (``ONNXRUNTIME_CPU_SPEEDUP``): onnxruntime for float32
    on a CPU when onnxruntime and tf2onnx are installed; keras otherwise (on a GPU, Keras
    runs there; onnxruntime runs float32 only).
    """
    if requested != "auto":
        return requested, "asked for"
    if precision != "float32":
        return "keras", f"onnxruntime runs float32 only; precision is {precision}"
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        return "keras", "a GPU is visible (the onnxruntime of the export extra is CPU-only)"
    missing = [name for name in ("onnxruntime", "tf2onnx")
               if importlib.util.find_spec(name) is None]
    if missing:
        return "keras", (f"{' and '.join(missing)} not installed (pip install "
                         "'unet_cbam[export]' for onnxruntime, measured "
                         f"{ONNXRUNTIME_CPU_SPEEDUP:.2f}x faster on CPUs)")
    return "onnxruntime", (f"float32 on a CPU: measured {ONNXRUNTIME_CPU_SPEEDUP:.2f}x Keras' "
                           "images/s (benchmarks/runtime.py)")


def model_policy(model: keras.Model) -> str:
    """The dtype policy ``model`` computes in: its convolutions' (a loaded model's own
    policy is the default one, whatever its layers use)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return model_policy(layer)
        if isinstance(layer, keras.layers.Conv2D):
            return layer.dtype_policy.name
    return model.dtype_policy.name


def in_precision(model: keras.Model, config, precision: str) -> keras.Model:
    """``model`` rebuilt under ``precision``'s dtype policy with the same weights, or
    ``model`` itself when it already computes in it."""
    policy = POLICIES[precision]
    if model_policy(model) == policy:
        return model
    from unet_cbam.models import build_unet

    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
        rebuilt = build_unet(config)
    finally:
        keras.config.set_dtype_policy(previous)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _load_folds(run: RunFolder) -> LoadedRun:
    """The folds of a cross-validation run, checked to share their preprocessing."""
    folds = run.folds()
    expected = folds[0].config.train.folds or len(folds)
    numbers = [int(fold.path.name.rsplit("_", 1)[1]) for fold in folds]
    missing = [index for index in range(expected) if index not in numbers
               or not run.fold(index).model_path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run.path}: fold(s) {', '.join(map(str, missing))} of {expected} have no "
            f"{MODEL_FILE} yet; train them (train.py --output {run.path} --folds {expected} "
            f"--fold K), or predict with one fold's folder")
    loaded = [load_run(fold.path) for fold in folds]
    first = loaded[0]
    for fold, other in zip(folds[1:], loaded[1:], strict=True):
        for what, mine, theirs in (
                ("model", first.config.model, other.config.model),
                ("normalization", first.config.data.normalization,
                 other.config.data.normalization),
                ("mask encoding", first.codec, other.codec)):
            if mine != theirs:
                raise ValueError(f"{fold.path}: its {what} differs from {folds[0].path.name}'s; "
                                 "the folds of one run must share it to be averaged")
    # The ensemble's threshold and post-processing were chosen on the folds' out-of-fold
    # predictions (cv_metrics.json); a single fold's own choice does not carry over.
    tuned = (json.loads(run.cv_metrics_path.read_text()).get("inference")
             if run.cv_metrics_path.is_file() else None)
    config = dataclasses.replace(first.config, inference=tuned)
    return LoadedRun(first.model, config, first.codec, first.class_names, run.path,
                     members=[other.model for other in loaded],
                     scales=[other.scales[0] for other in loaded])


def list_inputs(spec: str | Path, output_dir: Path | None = None) -> list[Path]:
    """Image files of a folder (and its subfolders), a single file, or a glob, sorted.

    Symlinked folders are never descended into (``**`` included), so a link
    loop cannot multiply the inputs. When the output folder lies inside the
    input folder, nothing under it is an input.
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        return sorted(_walk_images(path, output_dir))
    if path.is_file():
        return [path]
    if not _is_pattern(spec):
        raise FileNotFoundError(f"{spec}: no such file or folder")
    root = input_root(spec)
    pattern = str(path.relative_to(root)) if path.is_absolute() or root != Path(".") \
        else spec
    # An output folder below the pattern's root is not read back; the root itself as
    # output is refused later (check_output_folder), so its files stay inputs here.
    excluded = None
    if output_dir is not None and root.resolve() in output_dir.resolve().parents:
        excluded = output_dir.resolve()
    # pathlib's "**" does not follow symlinked folders (glob.glob's does, into loops).
    files = [p for p in root.glob(pattern) if p.is_file() and is_image_file(p)
             and (excluded is None or excluded not in p.resolve().parents)]
    return sorted(files)


def input_root(spec: str | Path) -> Path:
    """The folder that outputs mirror: the folder itself, a file's folder, or the
    part of a glob before its first wildcard."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    parts = []
    for part in path.parts:
        if _is_pattern(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk_images(folder: Path, output_dir: Path | None) -> list[Path]:
    excluded = output_dir.resolve() if output_dir is not None else None
    files = []
    for directory, subfolders, names in os.walk(folder):  # does not follow symlinked folders
        here = Path(directory)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                               and (excluded is None or (here / name).resolve() != excluded))
        files += [here / name for name in names
                  if is_image_file(here / name) and (here / name).is_file()]
    return files


def check_output_folder(output_dir: Path, files: list[Path]) -> None:
    """Refuse an output folder that holds any input, or that cannot be written.

    Writing next to the inputs is where inputs get dropped, skipped or
    replaced (a genuine ``b_mask.png``, masks of masks on a second run); the
    one safe rule is that outputs and inputs never share a folder tree.
    """
    resolved = output_dir.resolve()
    inside = [f for f in files if resolved == f.resolve().parent
              or resolved in f.resolve().parents]
    if inside:
        raise ValueError(
            f"{output_dir}: holds {len(inside)} of the input images (e.g. {inside[0]}); "
            "choose an --output folder that holds no input, e.g. a new folder beside them")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir}: is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(f"{output_dir}: cannot write there ({error.strerror or error})") \
            from None


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): the second of four shards (1-based)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r} must look like I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise ValueError(f"shard {text!r}: I must be between 1 and N")
    return index, count


def take_shard(files: list[Path], index: int, count: int) -> list[Path]:
    """Every ``count``-th file starting at ``index - 1``: disjoint, covering, balanced."""
    return files[index - 1::count]


#: Where a Kubernetes Indexed Job's shard count comes from without --shard-count.
SHARD_COUNT_VARIABLE = "UNET_CBAM_SHARD_COUNT"


def shard_from_environment(environ: dict[str, str] | None = None, count: int | None = None
                           ) -> tuple[int, int]:
    """``--shard auto``: (index, count), 1-based, from the scheduler's environment.

    A SLURM job array (``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_COUNT``, or
    with ``SLURM_ARRAY_TASK_MIN``/``MAX`` for arrays such as ``--array=0-7``), or a
    Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``, 0-based; its count from
    ``count`` (``--shard-count``) or ``UNET_CBAM_SHARD_COUNT``).
    """
    env = dict(os.environ if environ is None else environ)

    def number(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise ValueError(f"--shard auto: {name}={env[name]!r} is not a number") from None

    if "SLURM_ARRAY_TASK_ID" in env:
        task = number("SLURM_ARRAY_TASK_ID")
        low = number("SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        if count is None and "SLURM_ARRAY_TASK_COUNT" in env:
            count = number("SLURM_ARRAY_TASK_COUNT")
        elif count is None and "SLURM_ARRAY_TASK_MAX" in env:
            count = number("SLURM_ARRAY_TASK_MAX") - low + 1
        if count is None:
            raise ValueError("--shard auto: SLURM_ARRAY_TASK_ID is set but neither "
                             "SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX; give "
                             "--shard-count N")
        index = task - low + 1
        where = f"SLURM array task {task} of {low}..{low + count - 1}"
    elif "JOB_COMPLETION_INDEX" in env:
        index = number("JOB_COMPLETION_INDEX") + 1
        if count is None and SHARD_COUNT_VARIABLE in env:
            count = number(SHARD_COUNT_VARIABLE)
        if count is None:
            raise ValueError("--shard auto: JOB_COMPLETION_INDEX is set but the shard count is "
                             f"not: give --shard-count N or set {SHARD_COUNT_VARIABLE} (the "
                             "job's completions)")
        where = f"Kubernetes completion index {index - 1} of {count}"
    else:
        raise ValueError("--shard auto: not in a SLURM job array (no SLURM_ARRAY_TASK_ID) nor "
                         "a Kubernetes Indexed Job (no JOB_COMPLETION_INDEX); give --shard I/N")
    if not 1 <= index <= count:
        raise ValueError(f"--shard auto: {where} is outside 1..{count}")
    return index, count


SHARD_SUMMARY = re.compile(r"^summary-shard(\d+)of(\d+)\.csv$")


def shard_summary_name(index: int, count: int) -> str:
    return f"summary-shard{index}of{count}.csv"


@dataclass
class MergeReport:
    """What ``merge_summaries`` found: problems make the exit status 1."""

    summary: Path
    rows: int
    shards: int
    missing_shards: list[int] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_predicted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_shards or self.duplicates or self.failed
                    or self.not_predicted)


def merge_summaries(output_dir: str | Path, inputs: list[Path] | None = None) -> MergeReport:
    """Join the shards' ``summary-shardIofN.csv`` into ``summary.csv`` (sorted, atomic).

    Reports shards whose summary is missing, inputs listed by several shards,
    failed inputs and, given ``inputs`` (the whole list), inputs no shard lists.
    """
    output_dir = Path(output_dir)
    found = {}
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            match = SHARD_SUMMARY.match(path.name)
            if match:
                found[(int(match.group(1)), int(match.group(2)))] = path
    if not found:
        raise FileNotFoundError(f"{output_dir}: no shard summaries (summary-shardIofN.csv) "
                                "to merge")
    counts = {count for _, count in found}
    if len(counts) > 1:
        raise ValueError(f"{output_dir}: shard summaries of different shard counts "
                         f"({', '.join(map(str, sorted(counts)))}): remove the stale ones")
    count = counts.pop()
    rows: dict[str, list[dict]] = {}
    for key in sorted(found):
        with open(found[key], newline="") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(row["file"], []).append(row)
    merged = [versions[0] for _, versions in sorted(rows.items())]
    summary = output_dir / "summary.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(merged)
    write_text(summary, buffer.getvalue())
    listed = {str(path) for path in inputs or []}
    return MergeReport(
        summary=summary, rows=len(merged), shards=count,
        missing_shards=[i for i in range(1, count + 1) if (i, count) not in found],
        duplicates=sorted(name for name, versions in rows.items() if len(versions) > 1),
        failed=sorted(name for name, versions in rows.items()
                      if all(v["status"] == "failed" for v in versions)),
        not_predicted=sorted(listed - set(rows)) if inputs is not None else [])


@dataclass
class OutputOptions:
    save_probabilities: bool = False
    probability_format: str = "png"   # png (16-bit) or npy (float16)
    save_overlays: bool = False
    save_attention: bool = False
    save_uncertainty: bool = False    # predictive entropy as a 16-bit PNG
    instances: str | None = None      # binary models: components or watershed
    overwrite: bool = False


@dataclass
class ItemResult:
    file: Path
    status: str                   # ok, skipped (outputs exist), failed
    mask: Path | None = None
    height: int | None = None
    width: int | None = None
    seconds: float | None = None
    foreground_fraction: float | None = None
    error: str | None = None


@dataclass
class BatchResult:
    items: list[ItemResult] = field(default_factory=list)
    summary_csv: Path | None = None  # None when it could not be written
    evaluation: Evaluation | None = None

    @property
    def failed(self) -> list[ItemResult]:
        return [item for item in self.items if item.status == "failed"]


class BatchPredictor:
    """Runs a loaded model over files, writing every output atomically."""

    def __init__(self, run: LoadedRun, inference: InferenceConfig,
                 output_dir: str | Path | None = None, options: OutputOptions | None = None):
        """``output_dir`` may be None to use only ``predict_image`` / ``attention``."""
        self.run = run
        self.inference = inference
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.options = options or OutputOptions()
        if self.options.probability_format not in ("png", "npy"):
            raise ValueError(f"probability_format must be png or npy, "
                             f"got {self.options.probability_format!r}")
        if self.options.save_attention and not attention_layers(run.model):
            raise ValueError(f"{run.path}: the model has no attention layers to save")
        if self.options.instances not in (None, "components", "watershed"):
            raise ValueError(f"instances must be components or watershed, "
                             f"got {self.options.instances!r}")
        if self.options.instances and run.codec.num_labels != 2:
            raise ValueError(f"{run.path}: --instances needs a binary model; this one has "
                             f"{run.codec.num_labels} classes")
        folds = RunFolder(run.path).folds()
        #: Watershed seed spacing, from the training data's object sizes.
        self.min_distance = min_distance_for((folds[0] if folds else RunFolder(run.path))
                                             .read_fingerprint())
        tuned = run.config.inference if inference.postprocess else None
        #: The threshold applied: given, else tuned on validation, else 0.5.
        self.threshold = inference.threshold if inference.threshold is not None else \
            float((tuned or {}).get("threshold", 0.5))
        self.postprocessing = tuned if tuned and tuned.get("classes") else None
        #: The precision of the forward passes, and the models in it.
        if inference.runtime == "onnxruntime" and inference.precision == "auto":
            self.precision, why = "float32", "runtime onnxruntime runs float32 models"
        else:
            self.precision, why = choose_precision(inference.precision)
        self.models = [in_precision(model, run.config.model, self.precision)
                       for model in run.members]
        logger.debug("precision %s (%s)", self.precision, why)
        #: What runs the model (keras or onnxruntime).
        self.runtime, why = choose_runtime(inference.runtime, self.precision)
        logger.info("runtime %s (%s)", self.runtime, why)
        if self.runtime == "onnxruntime":
            if self.precision != "float32":
                raise ValueError(f"runtime onnxruntime runs float32 models; precision "
                                 f"{self.precision} needs runtime keras")
            self._onnx = tempfile.TemporaryDirectory(prefix="unet_cbam-onnx-")
            predictors = [onnx_predictor(to_onnx(model, Path(self._onnx.name) / f"m{i}.onnx"))
                          for i, model in enumerate(self.models)]
        else:
            predictors = [keras_predictor(model) for model in self.models]
        #: (scale, predictor, members): the members trained at one resolution, averaged
        #: tile by tile; groups at different resolutions are averaged at the image's size.
        self.groups = []
        for scale in sorted(set(run.scales), reverse=True):
            chosen = [p for p, s in zip(predictors, run.scales, strict=True) if s == scale]
            predictor = ensemble_predictor(chosen)
            self.groups.append((scale, with_tta(predictor) if inference.tta else predictor,
                                len(chosen)))
        self.predictor = self.groups[0][1]
        #: Whether every member sees images at their own size (then tiles stream).
        self.native = len(self.groups) == 1 and self.groups[0][0] == 1.0
        self.divisor = run.config.model.divisor

    # -- one image ---------------------------------------------------------

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` preprocessed image -> ``(H, W, K)`` probabilities (at the image's
        size, whatever resolution the members were trained at)."""
        total = None
        for scale, predictor, members in self.groups:
            probabilities = resampled_predict(
                image, predictor, scale=scale, tile_size=self.inference.tile_size,
                overlap=self.inference.overlap, batch_size=self.inference.batch_size,
                divisor=self.divisor)
            if len(self.groups) == 1:
                return probabilities
            total = probabilities * members if total is None else total + probabilities * members
        return total / sum(members for _, _, members in self.groups)

    def predict_raw(self, raw: np.ndarray, path: str | Path = "",
                    keep_probabilities: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A decoded image as stored -> (labels ``(H, W)``, probabilities or None).

        Streams: each tile is preprocessed on its own and each finished band
        of rows is thresholded at once, so memory beyond the decoded image is
        the labels (1 byte a pixel), one tile-high band and, only when
        ``keep_probabilities``, the ``(H, W, K)`` float32 probabilities.
        Labels and probabilities equal ``predict_image(preprocess(raw))``; the labels
        are then post-processed as the run's ``inference`` section says (whole image),
        unless ``InferenceConfig.postprocess`` is off.
        """
        if raw.dtype.kind == "f" and self.run.normalization.mode == "bitdepth":
            to_float(raw, path)  # the range check applies to the whole image
        image = raw if raw.ndim == 3 else raw[..., None]
        run = self.run
        dtype = np.uint8 if self.run.codec.num_labels <= 256 else np.uint16
        if not self.native:  # resampled as in training: the whole image at once
            probabilities = self.predict_image(run.preprocess(raw, path))
            labels = probabilities_to_labels(probabilities, self.threshold).astype(dtype)
            if self.postprocessing is not None:
                labels = postprocess(labels, self.postprocessing, self.run.class_names)
            return labels, probabilities if keep_probabilities else None
        labels = np.empty(raw.shape[:2], dtype)
        probabilities = None
        for top, rows in sliding_window_rows(
                image, self.predictor, tile_size=self.inference.tile_size,
                overlap=self.inference.overlap, batch_size=self.inference.batch_size,
                divisor=self.divisor, convert=lambda tile: run.preprocess(tile, path)):
            labels[top:top + len(rows)] = probabilities_to_labels(rows, self.threshold)
            if keep_probabilities:
                if probabilities is None:
                    probabilities = np.empty(raw.shape[:2] + rows.shape[2:], np.float32)
                probabilities[top:top + len(rows)] = rows
        if self.postprocessing is not None:  # connected components need the whole image
            labels = postprocess(labels, self.postprocessing, self.run.class_names)
        return labels, probabilities

    def outputs(self, source: Path, root: Path | None = None) -> dict[str, Path]:
        """Output paths of ``source``: its path below ``root``, mirrored."""
        relative = Path(source.name)
        if root is not None:
            try:
                relative = source.resolve().relative_to(root.resolve())
            except ValueError:
                pass
        stem = relative.parent / relative.stem
        paths = {"mask": self.output_dir / f"{stem}.png"}
        if self.options.save_probabilities:
            extension = "npy" if self.options.probability_format == "npy" else "png"
            paths["probabilities"] = self.output_dir / "probabilities" / f"{stem}.{extension}"
        if self.options.save_overlays:
            paths["overlay"] = self.output_dir / "overlays" / f"{stem}.png"
        if self.options.save_attention:
            paths["attention"] = self.output_dir / "attention" / f"{stem}.png"
        if self.options.save_uncertainty:
            paths["uncertainty"] = self.output_dir / "uncertainty" / f"{stem}.png"
        if self.options.instances:
            paths["instances"] = self.output_dir / "instances" / f"{stem}.png"
        return paths

    def _write_outputs(self, raw, probabilities, labels, paths, attention=None) -> None:
        """Extras first, the mask last: an existing mask means a finished item."""
        if "probabilities" in paths:
            self._write_probabilities(probabilities, paths["probabilities"])
        if "uncertainty" in paths:
            entropy = predictive_entropy(probabilities)
            write_image(paths["uncertainty"], np.round(entropy * 65535).astype(np.uint16))
        if "instances" in paths:
            write_image(paths["instances"], label_instances(
                labels == 1, split=self.options.instances == "watershed",
                min_distance=self.min_distance))
        if "overlay" in paths:
            colors = class_colors(self.run.codec.num_labels)
            picture = overlay(self.run.preprocess(raw, standardize=False), labels, colors)
            if self.run.codec.num_labels > 2:
                picture = add_legend(picture, self.run.class_names, colors)
            write_image(paths["overlay"], picture)
        if attention is not None:
            shown, maps = attention
            figure = plot_attention(shown, maps, title=paths["attention"].stem)
            with atomic_write(paths["attention"]) as temporary:
                figure.savefig(temporary, dpi=100, format="png")
        write_mask(paths["mask"], labels, self.run.codec)

    def _write_probabilities(self, probabilities: np.ndarray, path: Path) -> None:
        if path.suffix == ".npy":
            with atomic_write(path) as temporary, open(temporary, "wb") as handle:
                np.save(handle, probabilities.astype(np.float16))
            return
        scaled = np.round(np.clip(probabilities, 0, 1) * 65535).astype(np.uint16)
        if scaled.shape[-1] == 1:
            write_image(path, scaled[..., 0])
        else:  # one 16-bit PNG per class
            for index in range(scaled.shape[-1]):
                write_image(path.with_name(f"{path.stem}_class{index}.png"), scaled[..., index])

    def attention_view(self, image: np.ndarray) -> np.ndarray:
        """What ``attention`` looks at: the whole image, or its central tile when
        the image is much larger than a tile (works on raw or preprocessed images)."""
        height, width = image.shape[:2]
        tile = self.inference.tile_size
        if height * width > 4 * tile * tile:
            top, left = max(0, (height - tile) // 2), max(0, (width - tile) // 2)
            image = image[top:top + tile, left:left + tile]
        return image

    def attention(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """(image shown, one image's attention maps): ``attention_view(image)``
        padded to the divisor."""
        image = self.attention_view(image)
        if self.run.scales[0] != 1.0:  # the model's own resolution
            image = resize_image(image, *scaled_size(*image.shape[:2], self.run.scales[0]))
            image = image.reshape(image.shape[:2] + (-1,))
        height, width = image.shape[:2]
        padded_h, padded_w = round_up(height, self.divisor), round_up(width, self.divisor)
        padded = np.pad(image, ((0, padded_h - height), (0, padded_w - width), (0, 0)),
                        mode="symmetric")
        maps = attention_maps(self.run.model, padded[None])
        cropped = {}
        for level, gates in maps.items():
            stride = 2**level
            cropped[level] = {
                key: (value[0, :-(-height // stride), :-(-width // stride)]
                      if key == "spatial" else value[0])
                for key, value in gates.items()}
        return image, cropped

    # -- a batch -----------------------------------------------------------

    def run_files(self, files: list[Path], progress: bool = True,
                  summary_name: str = "summary.csv", root: Path | None = None) -> BatchResult:
        """Predict every file; report failures; never stop for one bad input.

        Outputs mirror the files' paths below ``root`` (default: their
        common folder). The summary CSV gets a row as each item finishes
        (a killed run leaves one) and is rewritten sorted at the end.
        """
        if self.output_dir is None:
            raise ValueError("BatchPredictor needs an output_dir to write files")
        check_output_folder(self.output_dir, files)
        remove_stale_temporaries(self.output_dir, depth=None)
        if root is None and files:
            root = Path(os.path.commonpath([f.parent.resolve() for f in files]))
        result = BatchResult(summary_csv=self.output_dir / summary_name)
        summary = _SummaryWriter(result.summary_csv)
        claimed: dict[Path, Path] = {}
        todo: list[tuple[Path, dict[str, Path]]] = []
        for source in files:
            paths = self.outputs(source, root)
            mask = paths["mask"]
            if mask in claimed:
                item = ItemResult(source, "failed", error=f"output {mask.name} is already "
                                  f"written for {claimed[mask].name} (same file stem)")
            elif not self.options.overwrite and all(p.exists() for p in paths.values()):
                item = self._skipped(source, mask)
            else:
                claimed[mask] = source
                todo.append((source, paths))
                continue
            claimed[mask] = source
            result.items.append(item)
            summary.add(item)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="read") as readers, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer:
            def read(source: Path) -> np.ndarray:
                return read_raw(source, self.inference.max_pixels)

            def write(item: ItemResult, *outputs) -> None:
                try:
                    self._write_outputs(*outputs)
                except Exception as error:
                    logger.error("%s: cannot write outputs: %s", item.file,
                                 _one_line(error, item.file))
                    item.status, item.mask = "failed", None
                    item.error = f"writing: {_one_line(error, item.file)}"
                summary.add(item)

            # Read one image ahead and write in the background: the model never waits on I/O.
            pending: Future | None = readers.submit(read, todo[0][0]) if todo else None
            writes: list[Future] = []
            bar = tqdm(todo, desc="predicting", unit="image", disable=not progress)
            for index, (source, paths) in enumerate(bar):
                current = pending
                pending = readers.submit(read, todo[index + 1][0]) if index + 1 < len(todo) \
                    else None
                started = time.perf_counter()
                try:
                    image = current.result()  # as decoded: converted tile by tile
                    labels, probabilities = self.predict_raw(
                        image, source,
                        keep_probabilities="probabilities" in paths or "uncertainty" in paths)
                    attention = self.attention(self.run.preprocess(
                        self.attention_view(image), source)) if "attention" in paths else None
                except Exception as error:  # a bad item must not stop the batch
                    message = _one_line(error, source)
                    logger.error("%s: %s", source, message)
                    item = ItemResult(source, "failed", error=message)
                    result.items.append(item)
                    summary.add(item)
                    continue
                item = ItemResult(source, "ok", mask=paths["mask"], height=image.shape[0],
                                  width=image.shape[1],
                                  foreground_fraction=float((labels > 0).mean()),
                                  seconds=time.perf_counter() - started)
                result.items.append(item)
                writes.append(writer.submit(write, item, image, probabilities, labels, paths,
                                            attention))
            for future in writes:
                future.result()
        result.items.sort(key=lambda item: str(item.file))
        summary.rewrite(result.items)
        if summary.broken:
            result.summary_csv = None
        return result

    def _skipped(self, source: Path, mask: Path) -> ItemResult:
        """The row of an item done earlier, with its mask's size and foreground."""
        item = ItemResult(source, "skipped", mask=mask)
        try:
            labels = read_mask(mask, self.run.codec)
            item.height, item.width = labels.shape
            item.foreground_fraction = float(((labels > 0) & (labels != IGNORE_LABEL)).mean())
        except (ImageReadError, OSError) as error:
            logger.warning("%s: existing mask not readable (%s); --overwrite predicts it again",
                           mask, _one_line(error, mask))
        return item

    def evaluate_instances(self, result: BatchResult, truth_dir: str | Path) -> dict:
        """Object-level precision, recall and F1 (IoU > 0.5) of this batch's instances
        against the true masks in ``truth_dir`` (``evaluate.evaluate_instances``)."""
        truths = {p.stem: p for p in Path(truth_dir).iterdir()
                  if p.is_file() and is_image_file(p)}
        pairs = []
        for item in result.items:
            if item.status in ("ok", "skipped") and item.file.stem in truths and item.mask:
                instances = (self.output_dir / "instances"
                             / item.mask.relative_to(self.output_dir))
                if instances.is_file():
                    pairs.append(Sample(item.file.stem, instances, truths[item.file.stem]))
        return evaluate_instances(pairs)

    def evaluate(self, result: BatchResult, truth_dir: str | Path) -> Evaluation:
        """Score this batch's masks (new and skipped) against ``truth_dir``."""
        truth_dir = Path(truth_dir)
        truths = {p.stem: p for p in truth_dir.iterdir() if p.is_file() and is_image_file(p)}
        done = [item for item in result.items if item.status in ("ok", "skipped")]
        pairs = [Sample(item.file.stem, item.mask, truths[item.file.stem])
                 for item in done if item.file.stem in truths]
        evaluation = evaluate_pairs(pairs, self.run.codec, self.run.class_names)
        evaluation.missing_truths = sorted(item.file.stem for item in done
                                           if item.file.stem not in truths)
        return evaluation


class _SummaryWriter:
    """summary.csv, a row appended as each item finishes, rewritten sorted at the end.

    Rows are appended (one write and a flush each) so a killed run still
    leaves a summary of what it finished; the final rewrite is atomic. A
    summary that cannot be written is logged, never the end of the batch.
    """

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.broken = False
        self._guard(lambda: write_text(path, ",".join(SUMMARY_COLUMNS) + "\n"))

    def add(self, item: ItemResult) -> None:
        def append():
            with open(self.path, "a", newline="") as handle:
                handle.write(_csv_line(item))
        with self.lock:
            if not self.broken:
                self._guard(append)

    def rewrite(self, items: list[ItemResult]) -> None:
        text = ",".join(SUMMARY_COLUMNS) + "\n" + "".join(_csv_line(i) for i in items)
        self.broken = False
        self._guard(lambda: write_text(self.path, text))

    def _guard(self, action) -> None:
        try:
            action()
        except OSError as error:
            self.broken = True
            logger.error("%s: cannot write the summary (%s)", self.path,
                         error.strerror or error)


def _csv_line(item: ItemResult) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([
        item.file, item.status, item.mask or "", item.height or "", item.width or "",
        "" if item.seconds is None else f"{item.seconds:.3f}",
        "" if item.foreground_fraction is None else f"{item.foreground_fraction:.6f}",
        item.error or ""])
    return buffer.getvalue()


def _one_line(error: BaseException, path: str | Path | None = None) -> str:
    """The error on one line, without a leading ``path: `` (callers name the file)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if path is not None and text.startswith(f"{path}: "):
        text = text[len(f"{path}: "):]
    return text
