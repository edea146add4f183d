"""Instances from a binary mask, and their object-level evaluation.

``label_instances`` numbers the connected components of a foreground mask;
with ``split=True`` touching objects (nuclei) are separated by a marker
watershed on the distance transform (scikit-image: ``peak_local_max`` and
``segmentation.watershed``; scipy's exact Euclidean distance transform).
``object_scores`` matches predicted to true instances at IoU > 0.5 (a match
is then unique) and gives object-level precision, recall and F1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

#: Instance labels are written as 16-bit PNGs.
MAX_INSTANCES = 65535
MATCH_IOU = 0.5


def min_distance_for(fingerprint: dict | None, class_name: str = "foreground",
                     default: int = 5) -> int:
    """Watershed seeds at least half a typical object radius apart (from the fingerprint's
    median object area), else ``default`` pixels."""
    objects = ((fingerprint or {}).get("objects") or {}).get(class_name) or {}
    area = objects.get("median_area")
    if not area:
        return default
    return max(2, round(0.5 * math.sqrt(area / math.pi)))


def label_instances(mask: np.ndarray, split: bool = False, min_distance: int = 5
                    ) -> np.ndarray:
    """uint16 instance labels (0 background, 1..N) of the foreground ``mask``.

    ``split``: separate touching objects by a watershed of the distance
    transform from its local maxima (at least ``min_distance`` apart).
    """
    from scipy import ndimage
    from skimage.measure import label

    mask = np.asarray(mask).astype(bool)
    if not split:
        labels = label(mask, connectivity=2)
    else:
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        distance = ndimage.distance_transform_edt(mask)
        components = label(mask, connectivity=2)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=components,
                               exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=mask)
        # A component without a peak (thinner than the seeds' spacing) keeps its own label.
        orphans = components * (labels == 0) * mask
        if orphans.any():
            _, orphans = np.unique(orphans, return_inverse=True)
            orphans = orphans.reshape(mask.shape)
            labels = np.where(orphans > 0, orphans + labels.max(), labels)
    count = int(labels.max())
    if count > MAX_INSTANCES:
        raise ValueError(f"{count} instances do not fit a 16-bit label image")
    return labels.astype(np.uint16)


def match_counts(predicted: np.ndarray, true: np.ndarray, iou: float = MATCH_IOU
                 ) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of instance label images."""
    predicted = np.asarray(predicted).astype(np.int64).ravel()
    true = np.asarray(true).astype(np.int64).ravel()
    _, predicted = np.unique(predicted, return_inverse=True)  # 0 stays first: background
    _, true = np.unique(true, return_inverse=True)
    n_pred, n_true = int(predicted.max()) + 1, int(true.max()) + 1
    overlap = np.bincount(predicted * n_true + true, minlength=n_pred * n_true)
    overlap = overlap.reshape(n_pred, n_true)[1:, 1:].astype(np.float64)
    pred_area = np.bincount(predicted, minlength=n_pred)[1:, None]
    true_area = np.bincount(true, minlength=n_true)[None, 1:]
    union = pred_area + true_area - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(union > 0, overlap / union, 0.0)
    matched = int(np.count_nonzero(scores > iou))  # IoU > 0.5: each object matches once
    return matched, (n_pred - 1) - matched, (n_true - 1) - matched


def object_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]], iou: float = MATCH_IOU
                  ) -> dict[str, float | int]:
    """Object-level precision, recall and F1 pooled over (predicted, true) instance pairs."""
    tp = fp = fn = 0
    for predicted, true in pairs:
        a, b, c = match_counts(predicted, true, iou)
        tp, fp, fn = tp + a, fp + b, fn + c
    return {
        "iou_threshold": iou, "true_positives": tp, "false_positives": fp,
        "false_negatives": fn,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
    }


def as_instances(raw: np.ndarray) -> np.ndarray:
    """A true mask as instances: instance labels as they are; a mask with a single
    foreground value (0/255) numbered by connected components."""
    values = np.unique(raw)
    foreground = values[values > 0]
    if len(foreground) <= 1:
        return label_instances(raw > 0)
    return raw
