"""Score a folder of predicted masks against ground truth.

Works on masks from any tool, as long as they use the truth's encoding
(binary masks may use different foreground values: 0/1 against 0/255 is
fine). Per image and class: Dice, IoU, precision, recall; per image: pixel
accuracy. The summary has, per class, the mean over images and the pooled
figure over all pixels of the set, and their means over classes.

A class absent from both truth and prediction of an image has no Dice, IoU,
precision or recall there (NaN in the CSV, null in the JSON); means skip it.

The command line is ``unet-cbam-evaluate`` (``python -m unet_cbam.cli.evaluate``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
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
from unet_cbam.files import atomic_write, write_text

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
    """Per-image and per-class scores of a folder of predictions, and what could not be paired."""
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
            # pixels of every image together: rows the true class, columns the predicted one
            "confusion_matrix": {
                "classes": list(self.class_names),
                "pixels": (self.pooled.astype(np.int64).tolist() if self.pooled is not None
                           else None)},
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


def mask_files(folder: Path) -> list[Path]:
    """The mask files of a folder, sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def pair_predictions(pred_dir: Path, truth_dir: Path
                     ) -> tuple[list[Sample], list[str], list[str]]:
    """Pairs (``image_path`` = prediction, ``mask_path`` = truth) by their exact stem.

    Returns the pairs and the stems missing on each side. (A prediction named
    ``a_mask.png``, as predict.py once wrote, is not guessed to be ``a``'s: it is
    reported unpaired.)
    """
    predictions = {p.stem: p for p in mask_files(pred_dir)}
    truths = {p.stem: p for p in mask_files(truth_dir)}
    pairs = []
    for stem, truth in truths.items():
        prediction = predictions.get(stem)
        if prediction is not None:
            pairs.append(Sample(stem, prediction, truth))
    matched = {s.image_path.stem for s in pairs}
    missing_predictions = sorted(set(truths) - {s.stem for s in pairs})
    missing_truths = sorted(set(predictions) - matched)
    return pairs, missing_predictions, missing_truths


def infer_codec(truth_paths: list[Path], *, encoding: str | None = None,
                num_classes: int | None = None, threshold: int = 0,
                ignore_value: int | None = None,
                colors: list[list[int]] | None = None, sample: int = 64) -> MaskCodec:
    """The codec of true masks, from what is given and what the masks show.

    What is given is kept; the rest is read from up to ``sample`` masks by the rules
    training uses (``unet_cbam.data.classes``: binary and instance masks, class ids with
    255 as void, colours in ascending R:G:B order, palette PNGs), and refused with the
    file named where the masks do not say. Palette PNGs mixed with plain masks are
    refused too. ``threshold`` and ``ignore_value`` always apply.
    """
    from unet_cbam.config import DataConfig
    from unet_cbam.data.classes import resolve_classes
    from unet_cbam.data.verify import Sample

    picked = truth_paths[:sample]
    if encoding is None and colors is None:
        flags = {path: read_mask_raw(path)[1] for path in picked}
        palettes = [p for p, is_palette in flags.items() if is_palette]
        if palettes and len(palettes) != len(flags):
            plain = [p.name for p, is_palette in flags.items() if not is_palette]
            raise ValueError(
                f"{len(palettes)} truth mask(s) are palette PNGs (e.g. {palettes[0].name}) and "
                f"{len(plain)} are not ({', '.join(plain[:5])}); give --mask-encoding")
    data = DataConfig(mask_encoding=encoding or ("rgb" if colors else "auto"),
                      class_colors=colors, ignore_value=ignore_value,
                      binary_threshold=threshold)
    samples = [Sample(path.stem, path, path) for path in picked]
    data, count, _ = resolve_classes(samples, data, num_classes or "auto")
    if data.mask_encoding == "binary" and count != 1:
        raise ValueError(f"binary masks have num_classes 1, got {count}")
    return MaskCodec.from_data_config(data, count)


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path, codec: MaskCodec | None = None,
                     class_names: list[str] | None = None) -> Evaluation:
    """Score every prediction in ``pred_dir`` that has a truth; report the ones that do not.

    ``codec`` None: inferred from the truth masks (``infer_codec``).
    """
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
    names = class_names or codec.default_class_names()
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


def evaluate_instances(pairs: list[Sample]) -> dict:
    """Object-level precision, recall and F1 (IoU > 0.5, ``unet_cbam.instances``) of
    predicted instance label images (``image_path``) against true masks (``mask_path``:
    instance labels, or binary masks numbered by connected components)."""
    from unet_cbam.instances import as_instances, object_scores

    def read(path: Path) -> np.ndarray:
        raw, _ = read_mask_raw(path)
        if raw.ndim == 3:
            raise ImageReadError(f"{path}: an instance mask must have one channel")
        return raw
    return {"images": len(pairs), **object_scores(
        (read(s.image_path), as_instances(read(s.mask_path))) for s in pairs)}


def evaluate_instance_folders(pred_dir: str | Path, truth_dir: str | Path) -> dict:
    """``evaluate_instances`` of two folders paired by stem, with the unpaired stems."""
    pairs, missing_predictions, missing_truths = pair_predictions(Path(pred_dir),
                                                                  Path(truth_dir))
    return {**evaluate_instances(pairs), "missing_predictions": missing_predictions,
            "missing_truths": missing_truths}


def write_reports(evaluation: Evaluation, json_path: str | Path) -> tuple[Path, Path]:
    """Write ``FILE.json`` (summary) and ``FILE.csv`` (per image and class) atomically."""
    json_path = Path(json_path)
    csv_path = json_path.with_suffix(".csv")
    write_text(json_path, json.dumps(evaluation.summary(), indent=2))
    columns = ["file", "truth", "class", *SCORES, "pixel_accuracy"]
    with atomic_write(csv_path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(evaluation.rows)
    return json_path, csv_path


def format_summary(summary: dict) -> str:
    """``Evaluation.summary()`` as a few lines of text for a terminal."""
    lines = [f"{summary['images']} image(s)",
             f"{'class':<16}{'Dice':>8}{'IoU':>8}{'prec.':>8}{'recall':>8}   (mean over images)"]
    for name, entry in summary["classes"].items():
        values = [entry[f"mean_{s}"] for s in SCORES]
        lines.append(f"{name:<16}" + "".join(f"{v:>8.4f}" if v is not None else f"{'-':>8}"
                                             for v in values))
    if summary["mean_pixel_accuracy"] is not None:
        lines.append(f"pixel accuracy {summary['mean_pixel_accuracy']:.4f}")
    if summary["missing_predictions"]:
        lines.append(f"no prediction for {len(summary['missing_predictions'])} truth mask(s): "
                     f"{', '.join(summary['missing_predictions'][:10])}")
    if summary["missing_truths"]:
        lines.append(f"no truth for {len(summary['missing_truths'])} prediction(s): "
                     f"{', '.join(summary['missing_truths'][:10])}")
    lines += [f"error: {error}" for error in summary["errors"]]
    return "\n".join(lines)


if __name__ == "__main__":  # the command lives in the CLI: say so, never exit 0 silently
    import sys

    print("python -m unet_cbam.evaluate is not a command; use: unet-cbam evaluate --pred DIR "
          "--truth DIR (or python -m unet_cbam evaluate ...)", file=sys.stderr)
    sys.exit(2)
