"""What a trained model is worth on its validation images: per-class scores of the best
model (``metrics.json``) and the predictions the threshold and post-processing are chosen
on (``unet_cbam.postprocess.tune``)."""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from unet_cbam import postprocess as postprocessing
from unet_cbam.config import InferenceConfig, TunedInference, monitor_mode
from unet_cbam.data.dataset import PairSource
from unet_cbam.inference import keras_predictor, resampled_predict
from unet_cbam.metrics import segmentation_metrics
from unet_cbam.run import RunFolder

logger = logging.getLogger(__name__)


def validation_predictions(model: keras.Model, source: PairSource, divisor: int,
                           limit: int = postprocessing.MAX_IMAGES
                           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(probabilities, labels) of up to ``limit`` validation images (evenly spread), whole
    and at their own size, with predict.py's default tiling (and its resampling, when
    the model was trained on resampled images): what the post-processing is chosen on."""
    inference = InferenceConfig()
    predictor = keras_predictor(model)
    count = len(source)
    indices = range(count) if count <= limit else \
        np.linspace(0, count - 1, limit).round().astype(int).tolist()
    pairs = []
    for index in indices:
        image, labels = source.native(index)
        probabilities = resampled_predict(
            source.normalization.standardize(image), predictor, scale=source.scale,
            tile_size=inference.tile_size, overlap=inference.overlap,
            batch_size=inference.batch_size, divisor=divisor)
        pairs.append((probabilities, labels))
    return pairs


def log_inference(tuned: TunedInference) -> None:
    """Log the threshold and post-processing chosen on validation, with their Dice."""
    judged = f" of {tuned.tuned_on}" if tuned.tuned_on else ""
    if tuned.threshold is not None:
        logger.info("validation: threshold %.2f (Dice%s %s)", tuned.threshold, judged,
                    ", ".join(f"{k}: {v:.4f}" for k, v in (tuned.threshold_dice or {}).items()))
    for name, steps in tuned.classes.items():
        chosen = [f"min_size {steps['min_size']}" if steps["min_size"] else ""]
        chosen += [key for key in ("largest_only", "fill_holes") if steps[key]]
        before, after = steps["validation_dice"]
        logger.info("validation: post-processing of %s: %s (Dice%s %.4f -> %.4f)", name,
                    ", ".join(c for c in chosen if c) or "none helps", judged, before, after)


def final_metrics(best: keras.Model, run: RunFolder, val_ds: tf.data.Dataset,
                  names: list[str], monitor: str) -> dict:
    """Per-class validation scores of ``best``, the run's saved best model.

    One graph function scores a batch (the forward pass and every metric's update):
    run eagerly, the 2 x classes + 2 metrics' updates cost more than the forward pass.
    """
    metrics = segmentation_metrics(names)

    @tf.function(reduce_retracing=True)
    def score(images, targets):
        predictions = best(images, training=False)
        for metric in metrics:
            metric.update_state(targets, predictions)

    for images, targets in val_ds:
        score(images, targets)
    scores = {m.name: float(m.result()) for m in metrics}
    history = run.read_history()
    best_epoch = None
    if history.get(monitor):
        pick = np.nanargmin if monitor_mode(monitor) == "min" else np.nanargmax
        best_epoch = int(history["epoch"][int(pick(history[monitor]))]) + 1
    return {
        "best_epoch": best_epoch,
        "monitor": monitor,
        "classes": {name: {"iou": scores[f"iou_{name}"], "dice": scores[f"dice_{name}"]}
                    for name in names},
        "mean_iou": scores["mean_iou"],
        "mean_dice": scores["mean_dice"],
    }
