"""Exact per-class IoU and Dice over a whole validation set.

Each metric accumulates a confusion matrix (Keras' ``IoU`` machinery) over
every validation pixel of the epoch, so the figures are the data set's, not
an average of per-batch scores. Dice follows from IoU per class:
``Dice = 2 IoU / (1 + IoU)``. Ignored pixels are excluded.
"""

from __future__ import annotations

import keras
from keras import ops

from unet_cbam.losses import split_targets


def predicted_labels(y_pred, threshold: float = 0.5):
    """Probabilities -> label ids: threshold for a sigmoid head, argmax otherwise."""
    if y_pred.shape[-1] == 1:
        return ops.cast(y_pred[..., 0] > threshold, "int32")
    return ops.cast(ops.argmax(y_pred, axis=-1), "int32")


def true_labels(y_true):
    """Pipeline targets -> label ids, -1 where ignored."""
    one_hot, valid = split_targets(y_true)
    labels = ops.cast(ops.argmax(one_hot, axis=-1), "int32")
    return ops.where(valid[..., 0] > 0.5, labels, -1)


@keras.saving.register_keras_serializable(package="unet_cbam")
class SegmentationScore(keras.metrics.IoU):
    """IoU or Dice of some classes (their mean), from an epoch-long confusion matrix.

    Args:
        num_labels: labels in the targets (2 for a binary model).
        class_ids: the classes averaged (one class for a per-class score).
        score: ``"iou"`` or ``"dice"``.
        threshold: sigmoid heads: foreground where p > threshold.
    """

    def __init__(self, num_labels: int, class_ids: list[int], score: str = "iou",
                 threshold: float = 0.5, name: str | None = None, dtype=None):
        if score not in ("iou", "dice"):
            raise ValueError(f"score must be 'iou' or 'dice', got {score!r}")
        super().__init__(num_classes=num_labels, target_class_ids=list(class_ids),
                         name=name or f"{score}", ignore_class=-1, sparse_y_true=True,
                         sparse_y_pred=True, dtype=dtype)
        self.score = score
        self.threshold = float(threshold)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(true_labels(y_true), predicted_labels(y_pred, self.threshold),
                                    sample_weight)

    def result(self):
        matrix = ops.cast(self.total_cm, self.dtype)
        true_positives = ops.diagonal(matrix)
        union = ops.sum(matrix, axis=0) + ops.sum(matrix, axis=1) - true_positives
        iou = ops.divide_no_nan(true_positives, union)
        values = 2.0 * iou / (1.0 + iou) if self.score == "dice" else iou
        ids = ops.convert_to_tensor(self.target_class_ids, "int32")
        present = ops.take(union, ids) > 0
        selected = ops.take(values, ids)
        count = ops.sum(ops.cast(present, self.dtype))
        return ops.divide_no_nan(ops.sum(ops.where(present, selected, 0.0)), count)

    def get_config(self):
        return {"num_labels": self.num_classes, "class_ids": list(self.target_class_ids),
                "score": self.score, "threshold": self.threshold, "name": self.name,
                "dtype": self.dtype}


def segmentation_metrics(class_names: list[str], threshold: float = 0.5
                         ) -> list[SegmentationScore]:
    """Per-class IoU and Dice (``iou_<name>``, ``dice_<name>``), then their means."""
    num_labels = len(class_names)
    metrics = []
    for class_id, name in enumerate(class_names):
        for score in ("iou", "dice"):
            metrics.append(SegmentationScore(num_labels, [class_id], score, threshold,
                                             name=f"{score}_{name}"))
    every = list(range(num_labels))
    metrics += [SegmentationScore(num_labels, every, "iou", threshold, name="mean_iou"),
                SegmentationScore(num_labels, every, "dice", threshold, name="mean_dice")]
    return metrics
