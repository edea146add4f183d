"""Data and result summaries for notebooks and scripts: numbers and tables, no plots.

Plots of these live in ``visualize.py``; both are tested, so notebooks only
call them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet_cbam.config import DataConfig, ModelConfig, to_dict
from unet_cbam.data.classes import MaskClasses
from unet_cbam.data.io import BITDEPTH, MaskCodec, Normalization, read_image, read_mask
from unet_cbam.data.verify import (
    DataError,
    DatasetReport,
    data_folders,
    verify_data,
)
from unet_cbam.evaluate import confusion_matrix, scores
from unet_cbam.fingerprint import fingerprint_from_report
from unet_cbam.run import RunFolder, class_names
from unet_cbam.tables import markdown_table  # noqa: F401 (the notebooks' table writer)


@dataclass
class DataOverview:
    """What a data folder holds, and what is wrong with it."""

    images_dir: Path
    masks_dir: Path
    codec: MaskCodec | None
    class_names: list[str]
    report: DatasetReport
    problems: list[str]
    #: Why binary masks are thresholded where they are (``binary_threshold: auto``).
    threshold_reason: str | None = None
    #: What the masks were found to encode (``mask_encoding``/``num_classes: auto``).
    classes: MaskClasses | None = None

    @property
    def fingerprint(self) -> dict | None:
        """The data set's fingerprint (``unet_cbam.fingerprint``); None without usable pairs."""
        if not self.report.samples or self.codec is None:
            return None
        return fingerprint_from_report(self.report, self.class_names, self.threshold_reason,
                                       self.classes)

    @property
    def class_fractions(self) -> dict[str, float]:
        """Share of labelled (not ignored) pixels per class."""
        counts = self.report.class_pixels[:-1] if self.report.class_pixels.size else []
        total = float(np.sum(counts))
        return {name: (float(c) / total if total else 0.0)
                for name, c in zip(self.class_names, counts, strict=False)}

    def table(self) -> list[tuple[str, str]]:
        """(property, value) rows: counts, sizes, bit depths, channels, classes."""
        info = list(self.report.info.values())
        sizes = Counter(f"{i.width}x{i.height}" for i in info)
        depths = Counter(f"{i.bit_depth}-bit" for i in info)
        channels = Counter(str(i.channels) for i in info)
        ignored = int(self.report.class_pixels[-1]) if self.report.class_pixels.size else 0
        return [
            ("images folder", str(self.images_dir)),
            ("masks folder", str(self.masks_dir)),
            ("usable pairs", str(len(self.report.samples))),
            ("problems", str(len(self.problems))),
            ("mask encoding", self.codec.encoding if self.codec else "unknown"),
            ("image sizes (w x h)", _counts(sizes)),
            ("bit depths", _counts(depths)),
            ("channels", _counts(channels)),
            ("ignored pixels", f"{ignored}"),
            *((f"class '{name}'", f"{fraction:.1%} of pixels")
              for name, fraction in self.class_fractions.items()),
        ]


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key} ({count})" for key, count in counter.most_common(6)) + (
        f", ... ({len(counter)} kinds)" if len(counter) > 6 else "")


def inspect_data(data: DataConfig, model: ModelConfig, progress: bool = False
                 ) -> DataOverview:
    """Pair and verify a data folder as train.py does (``prepare.verify_data``), but report
    the problems instead of raising."""
    try:
        verified = verify_data(data, model, progress, cache=False)
    except DataError as error:
        images_dir, masks_dir = data_folders(data)
        return DataOverview(images_dir, masks_dir, None, [],
                            DatasetReport(samples=[], codec=None), error.problems)
    report = verified.report
    return DataOverview(verified.images_dir, verified.masks_dir, verified.codec,
                        class_names(verified.data, verified.codec), report,
                        report.problems + report.warnings, verified.threshold_reason,
                        verified.classes)


def load_pairs(overview: DataOverview, count: int, channels: int, seed: int = 0,
               normalization: Normalization = BITDEPTH
               ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to ``count`` (stem, image, labels) pairs, chosen reproducibly; images are
    preprocessed with ``normalization`` (a run's: ``LoadedRun.normalization``)."""
    samples = overview.report.samples
    order = np.random.default_rng(seed).permutation(len(samples))[:count]
    chosen = [samples[i] for i in sorted(order)]
    return [(s.stem, read_image(s.image_path, channels, normalization),
             read_mask(s.mask_path, overview.codec)) for s in chosen]


def config_rows(config: Any) -> list[tuple[str, str, Any]]:
    """(section, field, value) for every field of a config dataclass tree."""
    rows = []
    for section, values in to_dict(config).items():
        if isinstance(values, dict):
            rows += [(section, name, value) for name, value in values.items()]
        else:
            rows.append(("", section, values))
    return rows


def metrics_rows(metrics: dict) -> list[tuple[str, float, float]]:
    """(class, IoU, Dice) from a run's metrics.json, then the means."""
    rows = [(name, scores_["iou"], scores_["dice"])
            for name, scores_ in metrics["classes"].items()]
    rows.append(("mean", metrics["mean_iou"], metrics["mean_dice"]))
    return rows


def worst_first(rows: list[dict], class_name: str, score: str = "dice") -> list[dict]:
    """Per-image evaluation rows of one class, worst score first (undefined last)."""
    selected = [r for r in rows if r["class"] == class_name]
    return sorted(selected, key=lambda r: (np.isnan(r[score]), r[score]))


def threshold_sweep(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                    thresholds: Sequence[float]) -> dict[str, np.ndarray]:
    """Pooled Dice of each class for each threshold of a binary model.

    probabilities: per image ``(H, W)`` or ``(H, W, 1)`` foreground probability;
    truths: per image ``(H, W)`` labels (0/1, IGNORE_LABEL ignored).
    Returns ``{"thresholds": (T,), "dice": (T, 2)}`` (background, foreground).
    """
    dice = np.zeros((len(thresholds), 2))
    for index, threshold in enumerate(thresholds):
        matrix = np.zeros((2, 2), np.int64)
        for probability, truth in zip(probabilities, truths, strict=True):
            probability = np.asarray(probability)
            if probability.ndim == 3:
                probability = probability[..., 0]
            matrix += confusion_matrix(truth, (probability > threshold).astype(np.int64), 2)
        dice[index] = scores(matrix)["dice"]
    return {"thresholds": np.asarray(thresholds, dtype=np.float64), "dice": dice}


def run_histories(run_dirs: Sequence[str | Path]) -> dict[str, dict[str, list[float]]]:
    """history.csv of each run, keyed by a unique label (the folder name, then its parent)."""
    histories = {}
    for run_dir in run_dirs:
        path = Path(run_dir)
        label = path.name
        if label in histories:
            label = f"{path.parent.name}/{path.name}"
        while label in histories:
            label += "'"
        histories[label] = RunFolder(path).read_history()
    return histories


def run_summaries(run_dirs: Sequence[str | Path]) -> list[list[Any]]:
    """A row per run: label, encoder, attention, variant, best epoch, mean IoU, mean Dice."""
    rows = []
    for label, run_dir in zip(run_histories(run_dirs), run_dirs, strict=True):
        run = RunFolder(run_dir)
        config, metrics = run.config, run.read_metrics()
        rows.append([label, config.model.encoder, config.model.attention,
                     config.model.cbam_variant, metrics["best_epoch"], metrics["mean_iou"],
                     metrics["mean_dice"]])
    return rows


RUN_SUMMARY_HEADERS = ["run", "encoder", "attention", "variant", "best epoch", "mean IoU",
                       "mean Dice"]


def score_rows(rows: list[dict]) -> list[list[Any]]:
    """Evaluation rows -> table rows: image, Dice, IoU, precision, recall, pixel accuracy."""
    return [[r["file"], r["dice"], r["iou"], r["precision"], r["recall"], r["pixel_accuracy"]]
            for r in rows]


SCORE_HEADERS = ["image", "Dice", "IoU", "precision", "recall", "pixel accuracy"]


def class_summary_rows(summary: dict) -> list[list[Any]]:
    """Per-class rows of ``Evaluation.summary()``: class, mean Dice, pooled Dice, mean IoU."""
    return [[name, entry["mean_dice"], entry["pooled_dice"], entry["mean_iou"]]
            for name, entry in summary["classes"].items()]


CLASS_SUMMARY_HEADERS = ["class", "mean Dice", "pooled Dice", "mean IoU"]


def pool_channel_gates(maps: Sequence[dict[int, dict[str, np.ndarray]]]
                       ) -> dict[int, dict[str, np.ndarray]]:
    """Several images' attention maps -> ``{level: {"channel": all gates}}``."""
    pooled: dict[int, list[np.ndarray]] = {}
    for entry in maps:
        for level, gates in entry.items():
            if "channel" in gates:
                pooled.setdefault(level, []).append(np.asarray(gates["channel"]).ravel())
    return {level: {"channel": np.concatenate(values)} for level, values in sorted(pooled.items())}
