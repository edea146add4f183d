"""Batch prediction: a run's model over a folder of images of any size.

One mask per input, in the training masks' encoding; optional probability
maps, overlays and attention figures; a summary CSV. A bad input is reported
and skipped; existing outputs are kept (resume) unless ``overwrite``; every
file is written under a temporary name and renamed; inputs are never
overwritten. ``shard = (i, n)`` takes every n-th file of the sorted list, so
n machines can share one folder. Outputs mirror the input tree: ``a/x.png``
and ``b/x.png`` under the input folder become ``OUTPUT/a/x.png`` and
``OUTPUT/b/x.png``.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from unet_cbam.attention import attention_layers, attention_maps
from unet_cbam.config import InferenceConfig, RunConfig
from unet_cbam.data.io import (
    MaskCodec,
    is_image_file,
    preprocess,
    read_raw,
    write_image,
    write_mask,
)
from unet_cbam.data.verify import Sample
from unet_cbam.evaluate import Evaluation, evaluate_pairs
from unet_cbam.files import atomic_write, remove_stale_temporaries
from unet_cbam.inference import (
    keras_predictor,
    probabilities_to_labels,
    round_up,
    sliding_window_predict,
    with_tta,
)
from unet_cbam.run import MODEL_FILE, RunFolder
from unet_cbam.visualize import add_legend, class_colors, overlay, plot_attention

logger = logging.getLogger(__name__)

MASK_SUFFIX_IN_PLACE = "_mask"
#: Subfolders of the output folder that hold extras (never inputs).
EXTRA_FOLDERS = ("probabilities", "overlays", "attention")


@dataclass
class LoadedRun:
    """A model with what is needed to preprocess for it and write its masks."""

    model: keras.Model
    config: RunConfig
    codec: MaskCodec
    class_names: list[str]
    path: Path

    @property
    def channels(self) -> int:
        return self.config.model.input_channels


def load_run(path: str | Path) -> LoadedRun:
    """A run folder, or a ``.keras`` file with the run's config.yaml beside it."""
    path = Path(path)
    model_path = path / MODEL_FILE if path.is_dir() else path
    run = RunFolder(model_path.parent)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found")
    if not run.exists():
        raise FileNotFoundError(
            f"{run.config_path}: not found; predict.py needs the run's config.yaml beside the "
            "model (it holds the preprocessing and the mask encoding)")
    model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    return LoadedRun(model, run.config, run.codec, run.class_names, run.path)


def list_inputs(spec: str | Path, output_dir: Path | None = None) -> list[Path]:
    """Image files of a folder (and its subfolders), a single file, or a glob, sorted.

    Symlinked folders are not followed. When the output folder lies inside
    the input folder, nothing under it is an input; when it *is* the input
    folder, the masks and extras predict.py writes there (``*_mask.png``,
    ``probabilities/``...) are not inputs.
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        return sorted(_walk_images(path, output_dir))
    if path.is_file():
        return [path]
    files = [Path(p) for p in glob.glob(spec, recursive=True)]
    files = [p for p in files if p.is_file() and is_image_file(p)]
    if not files and not _is_pattern(spec):
        raise FileNotFoundError(f"{spec}: no such file or folder")
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
    in_place = output_dir is not None and _same(folder, output_dir)
    excluded = None if output_dir is None or in_place else output_dir.resolve()
    files = []
    for directory, subfolders, names in os.walk(folder):  # does not follow symlinked folders
        here = Path(directory)
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".")
            and (excluded is None or (here / name).resolve() != excluded)
            and not (in_place and here == folder and name in EXTRA_FOLDERS))
        for name in names:
            file = here / name
            if not is_image_file(file) or not file.is_file():
                continue
            if in_place and file.stem.endswith(MASK_SUFFIX_IN_PLACE):
                continue
            files.append(file)
    return files


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


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


@dataclass
class OutputOptions:
    save_probabilities: bool = False
    probability_format: str = "png"   # png (16-bit) or npy (float16)
    save_overlays: bool = False
    save_attention: bool = False
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
    summary_csv: Path | None = None
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
        predictor = keras_predictor(run.model)
        self.predictor = with_tta(predictor) if inference.tta else predictor
        self.divisor = run.config.model.divisor

    # -- one image ---------------------------------------------------------

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` preprocessed image -> ``(H, W, K)`` probabilities."""
        return sliding_window_predict(
            image, self.predictor, tile_size=self.inference.tile_size,
            overlap=self.inference.overlap, batch_size=self.inference.batch_size,
            divisor=self.divisor)

    def outputs(self, source: Path, suffix: str = "", root: Path | None = None
                ) -> dict[str, Path]:
        """Output paths of ``source``: its path below ``root`` (mirrored), with ``suffix``."""
        relative = Path(source.name)
        if root is not None:
            try:
                relative = source.resolve().relative_to(root.resolve())
            except ValueError:
                pass
        stem = relative.parent / (relative.stem + suffix)
        paths = {"mask": self.output_dir / f"{stem}.png"}
        if self.options.save_probabilities:
            extension = "npy" if self.options.probability_format == "npy" else "png"
            paths["probabilities"] = self.output_dir / "probabilities" / f"{stem}.{extension}"
        if self.options.save_overlays:
            paths["overlay"] = self.output_dir / "overlays" / f"{stem}.png"
        if self.options.save_attention:
            paths["attention"] = self.output_dir / "attention" / f"{stem}.png"
        return paths

    def _write_outputs(self, image, probabilities, labels, paths, attention=None) -> None:
        """Extras first, the mask last: an existing mask means a finished item."""
        if "probabilities" in paths:
            self._write_probabilities(probabilities, paths["probabilities"])
        if "overlay" in paths:
            colors = class_colors(self.run.codec.num_labels)
            picture = overlay(image, labels, colors)
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

    def attention(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """(image shown, one image's attention maps): the whole image padded to the
        divisor, or its central tile when the image is much larger than a tile."""
        height, width = image.shape[:2]
        tile = self.inference.tile_size
        if height * width > 4 * tile * tile:
            top, left = max(0, (height - tile) // 2), max(0, (width - tile) // 2)
            image = image[top:top + tile, left:left + tile]
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
        common folder). When ``root`` is the output folder itself, masks get
        the suffix ``_mask`` so no input is overwritten.
        """
        if self.output_dir is None:
            raise ValueError("BatchPredictor needs an output_dir to write files")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.output_dir, depth=None)
        if root is None and files:
            root = Path(os.path.commonpath([f.parent.resolve() for f in files]))
        in_place = root is not None and _same(root, self.output_dir)
        suffix = MASK_SUFFIX_IN_PLACE if in_place else ""
        inputs = {f.resolve() for f in files}
        claimed: dict[Path, Path] = {}
        result = BatchResult()
        todo: list[tuple[Path, dict[str, Path]]] = []
        for source in files:
            paths = self.outputs(source, suffix, root)
            mask = paths["mask"]
            if mask in claimed:
                result.items.append(ItemResult(
                    source, "failed", error=f"output {mask.name} is already written for "
                    f"{claimed[mask].name} (same file stem)"))
                continue
            if any(p.resolve() in inputs for p in paths.values()):
                result.items.append(ItemResult(source, "failed",
                                               error="an output would overwrite an input"))
                continue
            claimed[mask] = source
            if not self.options.overwrite and all(p.exists() for p in paths.values()):
                result.items.append(ItemResult(source, "skipped", mask=mask))
                continue
            todo.append((source, paths))

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="read") as readers, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer:
            def read(source: Path) -> np.ndarray:
                return preprocess(read_raw(source), self.run.channels, source)

            # Read one image ahead and write in the background: the model never waits on I/O.
            pending: Future | None = readers.submit(read, todo[0][0]) if todo else None
            writes: list[tuple[ItemResult, Future]] = []
            bar = tqdm(todo, desc="predicting", unit="image", disable=not progress)
            for index, (source, paths) in enumerate(bar):
                current = pending
                pending = readers.submit(read, todo[index + 1][0]) if index + 1 < len(todo) \
                    else None
                started = time.perf_counter()
                try:
                    image = current.result()
                    probabilities = self.predict_image(image)
                    labels = probabilities_to_labels(probabilities, self.inference.threshold)
                    attention = self.attention(image) if "attention" in paths else None
                except Exception as error:  # a bad item must not stop the batch
                    logger.error("%s: %s", source, error)
                    result.items.append(ItemResult(source, "failed", error=_one_line(error)))
                    continue
                item = ItemResult(source, "ok", mask=paths["mask"], height=image.shape[0],
                                  width=image.shape[1],
                                  foreground_fraction=float((labels > 0).mean()))
                writes.append((item, writer.submit(
                    self._write_outputs, image, probabilities, labels, paths, attention)))
                item.seconds = time.perf_counter() - started
                result.items.append(item)
            for item, future in writes:
                try:
                    future.result()
                except Exception as error:
                    logger.error("%s: cannot write outputs: %s", item.file, error)
                    item.status, item.error = "failed", f"writing: {_one_line(error)}"
        result.items.sort(key=lambda item: str(item.file))
        result.summary_csv = self._write_summary(result.items, summary_name)
        return result

    def _write_summary(self, items: list[ItemResult], name: str) -> Path:
        path = self.output_dir / name
        columns = ["file", "status", "mask", "height", "width", "seconds",
                   "foreground_fraction", "error"]
        with atomic_write(path) as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for item in items:
                writer.writerow([item.file, item.status, item.mask or "", item.height or "",
                                 item.width or "",
                                 "" if item.seconds is None else f"{item.seconds:.3f}",
                                 "" if item.foreground_fraction is None
                                 else f"{item.foreground_fraction:.6f}",
                                 item.error or ""])
        return path

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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
