"""Score a folder of predicted masks against ground truth.

Works on masks from any tool, as long as they use the truth's encoding
(binary masks may use different foreground values: 0/1 against 0/255 is
fine). Per image and class: Dice, IoU, precision, recall; per image: pixel
accuracy. The summary has, per class, the mean over images and the pooled
figure over all pixels of the set, and their means over classes.

A class absent from both truth and prediction of an image has no Dice, IoU,
precision or recall there (NaN in the CSV, null in the JSON); means skip it.

    python -m unet_cbam.evaluate --pred DIR --truth DIR [--report FILE.json]
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unet_cbam.data.io import (
    IGNORE_LABEL,
    ImageReadError,
    MaskCodec,
    is_image_file,
    read_mask,
    read_mask_raw,
)
from unet_cbam.data.verify import Sample

logger = logging.getLogger(__name__)

SCORES = ("dice", "iou", "precision", "recall")


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_labels: int) -> np.ndarray:
    """``(num_labels, num_labels)`` counts, rows = truth, columns = prediction.

    Pixels whose truth is ``IGNORE_LABEL`` are left out.
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in size")
    valid = truth != IGNORE_LABEL
    truth = truth[valid].astype(np.int64)
    prediction = prediction[valid].astype(np.int64)
    if prediction.size and prediction.max() >= num_labels:
        raise ValueError(f"prediction has label {int(prediction.max())}, "
                         f"expected < {num_labels}")
    counts = np.bincount(truth * num_labels + prediction, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def scores(matrix: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-class Dice, IoU, precision, recall (NaN where undefined) and pixel accuracy."""
    matrix = matrix.astype(np.float64)
    true_positive = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = {
            "dice": 2 * true_positive / (predicted + actual),
            "iou": true_positive / (predicted + actual - true_positive),
            "precision": true_positive / predicted,
            "recall": true_positive / actual,
        }
    total = matrix.sum()
    result["pixel_accuracy"] = float(true_positive.sum() / total) if total else math.nan
    return result


@dataclass
class Evaluation:
    class_names: list[str]
    rows: list[dict] = field(default_factory=list)            # one per image and class
    pooled: np.ndarray | None = None                          # summed confusion matrix
    missing_predictions: list[str] = field(default_factory=list)
    missing_truths: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, file: str, truth: str, matrix: np.ndarray) -> None:
        """One image's confusion matrix: per-class rows, and into the pooled matrix."""
        self.pooled = matrix.copy() if self.pooled is None else self.pooled + matrix
        values = scores(matrix)
        for index, name in enumerate(self.class_names):
            self.rows.append({
                "file": file, "truth": truth, "class": name,
                **{score: float(values[score][index]) for score in SCORES},
                "pixel_accuracy": values["pixel_accuracy"],
            })

    def summary(self) -> dict:
        """Mean over images and pooled figures, per class and averaged over classes."""
        per_class = {}
        pooled = scores(self.pooled) if self.pooled is not None else None
        for index, name in enumerate(self.class_names):
            rows = [r for r in self.rows if r["class"] == name]
            entry = {"images": len(rows)}
            for score in SCORES:
                entry[f"mean_{score}"] = _nanmean([r[score] for r in rows])
                entry[f"pooled_{score}"] = (_clean(pooled[score][index])
                                            if pooled is not None else None)
            per_class[name] = entry
        images = sorted({r["file"] for r in self.rows})
        accuracies = {r["file"]: r["pixel_accuracy"] for r in self.rows}
        summary = {
            "images": len(images),
            "classes": per_class,
            "mean_pixel_accuracy": _nanmean([accuracies[f] for f in images]),
            "pooled_pixel_accuracy": _clean(pooled["pixel_accuracy"]) if pooled else None,
            "missing_predictions": self.missing_predictions,
            "missing_truths": self.missing_truths,
            "errors": self.errors,
        }
        for score in SCORES:
            summary[f"mean_{score}"] = _nanmean(
                [per_class[n][f"mean_{score}"] for n in self.class_names])
            summary[f"pooled_mean_{score}"] = _nanmean(
                [per_class[n][f"pooled_{score}"] for n in self.class_names])
        return summary


def _clean(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _nanmean(values) -> float | None:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else None


def pair_predictions(pred_dir: Path, truth_dir: Path
                     ) -> tuple[list[Sample], list[str], list[str]]:
    """Pairs (``image_path`` = prediction, ``mask_path`` = truth) by stem.

    A prediction named ``a_mask.png`` (predict.py's name when it writes into
    the input folder) also matches truth ``a``. Returns the pairs and the
    stems missing on each side.
    """
    for folder in (pred_dir, truth_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found")
    predictions = {p.stem: p for p in sorted(pred_dir.iterdir())
                   if p.is_file() and is_image_file(p)}
    truths = {p.stem: p for p in sorted(truth_dir.iterdir()) if p.is_file() and is_image_file(p)}
    pairs = []
    for stem, truth in truths.items():
        prediction = predictions.get(stem) or predictions.get(f"{stem}_mask")
        if prediction is not None:
            pairs.append(Sample(stem, prediction, truth))
    matched = {s.image_path.stem for s in pairs}
    missing_predictions = sorted(set(truths) - {s.stem for s in pairs})
    missing_truths = sorted(set(predictions) - matched)
    return pairs, missing_predictions, missing_truths


def infer_codec(truth_paths: list[Path], threshold: int = 0) -> MaskCodec:
    """Binary when truth masks hold at most two values, else indexed (max value + 1 classes)."""
    values: set[int] = set()
    palette = False
    for path in truth_paths[:64]:
        raw, palette = read_mask_raw(path)
        values.update(np.unique(raw).tolist())
    if len(values) <= 2 and not palette:
        return MaskCodec("binary", 1, threshold=threshold)
    encoding = "palette" if palette else "indexed"
    return MaskCodec(encoding, int(max(values)) + 1)


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path, codec: MaskCodec | None = None,
                     class_names: list[str] | None = None) -> Evaluation:
    """Score every prediction in ``pred_dir`` that has a truth; report the ones that do not."""
    pairs, missing_predictions, missing_truths = pair_predictions(Path(pred_dir), Path(truth_dir))
    evaluation = evaluate_pairs(pairs, codec, class_names)
    evaluation.missing_predictions = missing_predictions
    evaluation.missing_truths = missing_truths
    return evaluation


def evaluate_pairs(pairs: list[Sample], codec: MaskCodec | None = None,
                   class_names: list[str] | None = None) -> Evaluation:
    """Score pairs of (``image_path`` = predicted mask, ``mask_path`` = true mask)."""
    if codec is None:
        codec = infer_codec([s.mask_path for s in pairs])
    # A prediction from another tool may be saved without a palette, or in 0/1.
    prediction_codec = codec if codec.encoding != "palette" else \
        MaskCodec("indexed", codec.num_classes)
    names = class_names or default_class_names(codec)
    result = Evaluation(names, pooled=np.zeros((codec.num_labels,) * 2, np.int64))
    for sample in pairs:
        try:
            truth = read_mask(sample.mask_path, codec)
            raw_prediction, _ = read_mask_raw(sample.image_path)
            prediction = prediction_codec.decode(raw_prediction, sample.image_path)
            result.add(sample.image_path.name, sample.mask_path.name,
                       confusion_matrix(truth, prediction, codec.num_labels))
        except (ImageReadError, ValueError) as error:
            result.errors.append(f"{sample.image_path}: {error}")
            logger.error("%s: %s", sample.image_path, error)
    return result


def evaluate_arrays(items: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str]
                    ) -> Evaluation:
    """Score in-memory ``(name, truth labels, predicted labels)`` triples."""
    result = Evaluation(list(class_names), pooled=np.zeros((len(class_names),) * 2, np.int64))
    for name, truth, prediction in items:
        result.add(name, name, confusion_matrix(truth, prediction, len(class_names)))
    return result


def default_class_names(codec: MaskCodec) -> list[str]:
    return (["background", "foreground"] if codec.encoding == "binary"
            else [f"class{i}" for i in range(codec.num_labels)])


def write_reports(evaluation: Evaluation, json_path: str | Path) -> tuple[Path, Path]:
    """Write ``FILE.json`` (summary) and ``FILE.csv`` (per image and class) atomically."""
    json_path = Path(json_path)
    csv_path = json_path.with_suffix(".csv")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = json_path.with_name(f".{json_path.name}.tmp")
    temporary.write_text(json.dumps(evaluation.summary(), indent=2))
    os.replace(temporary, json_path)
    temporary = csv_path.with_name(f".{csv_path.name}.tmp")
    columns = ["file", "truth", "class", *SCORES, "pixel_accuracy"]
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(evaluation.rows)
    os.replace(temporary, csv_path)
    return json_path, csv_path


if __name__ == "__main__":
    import sys

    from unet_cbam.cli.evaluate import main

    sys.exit(main())
