"""Segmentation losses, chosen by name, computed by segmentation-models.

A loss name is terms joined by ``+``: ``ce`` (``bce`` is the same for binary
models), ``dice``, ``jaccard``, ``focal``; e.g. ``bce+dice``. ``auto`` is
``bce+dice`` for binary models and ``ce+dice`` otherwise.

Targets are the pipeline's ``(N, H, W, L + 1)`` maps: one-hot labels and a
last "valid" channel. Binary predictions ``p`` become two class maps
``[1 - p, p]`` (so ``ce`` on them *is* binary cross-entropy, and Dice
averages over background and foreground, as for several classes). Ignored
pixels have an all-zero target, so pixel-mean terms (CE, focal) get nothing
from them and are rescaled from "mean over all pixels" to "mean over valid
pixels"; region terms (Dice, Jaccard) also get a zeroed prediction there, so
ignored pixels count neither as false positives nor as false negatives.
"""

from __future__ import annotations

import keras
from keras import ops

from unet_cbam.segmentation_models import sm

#: name -> (segmentation-models loss class, is a mean over pixels, takes class weights)
LOSS_TERMS = {
    "ce": (sm.losses.CategoricalCELoss, True, True),
    "bce": (sm.losses.CategoricalCELoss, True, True),
    "focal": (sm.losses.CategoricalFocalLoss, True, False),
    "dice": (sm.losses.DiceLoss, False, True),
    "jaccard": (sm.losses.JaccardLoss, False, True),
}


def resolve_loss_name(name: str, num_classes: int) -> str:
    """``auto`` -> the default for the head; checks every term."""
    if name == "auto":
        return "bce+dice" if num_classes == 1 else "ce+dice"
    terms = [t.strip() for t in name.split("+")]
    unknown = [t for t in terms if t not in LOSS_TERMS]
    if unknown or not terms:
        raise ValueError(f"unknown loss term(s) {unknown} in {name!r}; "
                         f"use {', '.join(LOSS_TERMS)} joined by '+'")
    return "+".join(terms)


def class_probabilities(y_pred):
    """Model output -> one map per label: ``[1 - p, p]`` for a sigmoid head."""
    if y_pred.shape[-1] == 1:
        return ops.concatenate([1.0 - y_pred, y_pred], axis=-1)
    return y_pred


def split_targets(y_true):
    """``(..., L + 1)`` targets -> (one-hot ``(..., L)``, valid ``(..., 1)``)."""
    return y_true[..., :-1], y_true[..., -1:]


@keras.saving.register_keras_serializable(package="unet_cbam")
class SegmentationLoss(keras.losses.Loss):
    """The sum of the named terms over valid pixels.

    Args:
        loss: e.g. ``"bce+dice"`` (see the module docstring); not ``auto``.
        class_weights: a weight per label (binary: background, foreground),
            used by ce, dice and jaccard (segmentation-models' focal loss has
            none; its alpha = 0.25 and gamma = 2 apply).
    """

    def __init__(self, loss: str = "ce+dice", class_weights: list[float] | None = None,
                 name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss = resolve_loss_name(loss, num_classes=2)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        weights = self.class_weights if self.class_weights is not None else 1.0
        self.terms = []
        for term in self.loss.split("+"):
            loss_cls, is_pixel_mean, takes_weights = LOSS_TERMS[term]
            instance = loss_cls(class_weights=weights) if takes_weights else loss_cls()
            self.terms.append((instance, is_pixel_mean))

    def call(self, y_true, y_pred):
        target, valid = split_targets(ops.cast(y_true, "float32"))
        probabilities = class_probabilities(ops.cast(y_pred, "float32"))
        # segmentation-models averages CE and focal over pixels *and* classes;
        # this turns that into a per-pixel mean over valid pixels only.
        pixel_mean_scale = ops.cast(ops.size(target), "float32") / ops.maximum(ops.sum(valid), 1.0)
        total = 0.0
        for term, is_pixel_mean in self.terms:
            if is_pixel_mean:
                total = total + term(target, probabilities) * pixel_mean_scale
            else:
                total = total + term(target, probabilities * valid)
        return total

    def get_config(self):
        config = super().get_config()
        config.update(loss=self.loss, class_weights=self.class_weights)
        return config
