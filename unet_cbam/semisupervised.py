"""Semi-supervised training: learning from a folder of images without masks (``--unlabeled``).

The method is FixMatch's consistency training (Sohn et al., NeurIPS 2020) in the form
segmentation work uses it (Yang et al., "Revisiting weak-to-strong consistency in
semi-supervised semantic segmentation", CVPR 2023: UniMatch's single-stream baseline).
Each training step takes a batch of labelled patches and ``unlabeled_ratio`` times as many
unlabelled patches. An unlabelled patch comes in two views of the same crop and geometry:

- a *weak* view (flips and 90-degree rotations), from which the model, without gradient
  (and with the batch's own statistics, as FixMatch has it), predicts a pseudo-label per
  pixel, kept where its probability is at least ``confidence`` (and the pixel is real
  image, not padding);
- a *strong* view (the weak view with heavy photometric changes and cut-out holes:
  ``STRONG``), which is trained to predict those pseudo-labels.

The loss is the supervised loss on the labelled patches plus ``unlabeled_weight`` times the
run's own loss (``SegmentationLoss``, Dice and cross-entropy by default) of the strong
views against the pseudo-labels, with every unconfident pixel ignored as a void pixel is.
The Dice term weighs each class equally, however few of its pixels are confident: with
cross-entropy alone, as FixMatch and UniMatch have it, the confident pixels of a rare
foreground (a polyp) are outnumbered by confident background, and the consistency term
teaches mostly background (measured: docs/benchmarks/label-efficiency.md). Its weight
ramps up over the first ``unlabeled_rampup`` of the planned steps (``exp(-5 (1 - t)^2)``,
Laine and Aila 2017), while early pseudo-labels are poor.

Why this method: it needs no second network (cross pseudo supervision trains two; a mean
teacher keeps a second copy of the weights, to checkpoint and resume), so a step costs the
supervised step, one more forward and backward pass (the strong views) and one forward pass
(the weak views), and every strategy, checkpoint and resume of the supervised trainer works
unchanged. The state it adds is the step count the ramp reads, which the optimizer already
checkpoints.

The unlabelled images are read, checked and normalised as the labelled ones
(``verify_unlabeled``), at the plan's resolution, and their summary is part of the run's
fingerprint.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from unet_cbam.data.augment import PRESETS, augmentation_pipeline, patch_sampler
from unet_cbam.data.io import (
    BITDEPTH,
    DEFAULT_MAX_PIXELS,
    IGNORE_LABEL,
    DataError,
    ImageReadError,
    Normalization,
    preprocess,
    read_raw,
    resize_image,
    scaled_size,
)
from unet_cbam.data.verify import check_image
from unet_cbam.inputs import list_inputs
from unet_cbam.losses import class_probabilities
from unet_cbam.progress import progress as progress_bar

logger = logging.getLogger(__name__)

#: The strong view: photometric changes and cut-out holes on the weak view (no geometry, so
#: the weak view's pseudo-labels stay aligned). FixMatch's RandAugment colour operations and
#: Cutout, as albumentations transforms on images in [0, 1].
STRONG: list[dict[str, Any]] = [
    {"RandomBrightnessContrast": {"brightness_limit": 0.4, "contrast_limit": 0.4, "p": 0.8}},
    {"RandomGamma": {"gamma_limit": [60, 150], "p": 0.5}},
    {"OneOf": {"p": 0.5, "transforms": [
        {"GaussianBlur": {"blur_limit": [3, 7]}},
        {"GaussNoise": {"std_range": [0.02, 0.1]}},
        {"Sharpen": {"alpha": [0.2, 0.5]}},
    ]}},
    {"CoarseDropout": {"num_holes_range": [1, 4], "hole_height_range": [0.1, 0.3],
                       "hole_width_range": [0.1, 0.3], "fill": 0.5, "p": 0.5}},
]
#: Subfolders whose name says they hold masks: an unlabelled folder with one is refused.
MASK_FOLDERS = ("masks", "mask", "labels", "label", "annotations", "groundtruth", "gt")
#: Names of the logs a semi-supervised step adds (training only).
LOGS = ("supervised_loss", "unlabeled_loss", "confident")


# --------------------------------------------------------------------------
# the unlabelled images
# --------------------------------------------------------------------------

class ImageSource:
    """Unlabelled images as training reads them: preprocessed up to augmentation (in
    [0, 1], ``preprocess(..., standardize=False)``) and resampled by ``scale``, read from
    disk (a few recent ones kept)."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[tuple[int, int]], channels: int,
                 normalization: Normalization = BITDEPTH, scale: float = 1.0):
        if len(paths) != len(sizes):
            raise ValueError(f"{len(paths)} images but {len(sizes)} sizes")
        self.paths = [Path(p) for p in paths]
        self.native_sizes = [tuple(size) for size in sizes]
        self.channels, self.normalization, self.scale = channels, normalization, float(scale)
        self.sizes = [scaled_size(h, w, self.scale) for h, w in self.native_sizes]

    def __len__(self) -> int:
        return len(self.paths)

    def rescaled(self, scale: float) -> ImageSource:
        """The same images resampled by ``scale`` (relative to their own size)."""
        return ImageSource(self.paths, self.native_sizes, self.channels, self.normalization,
                           scale)

    @functools.lru_cache(maxsize=16)  # noqa: B019 (one source per pipeline; bounded)
    def get(self, index: int) -> np.ndarray:
        """Image ``index``: ``(H, W, channels)`` float32 in [0, 1], at the source's scale."""
        path = self.paths[index]
        image = preprocess(read_raw(path), self.channels, path, self.normalization,
                           standardize=False)
        height, width = self.sizes[index]
        image = resize_image(image, height, width)
        return image if image.ndim == 3 else image[..., None]


def find_unlabeled(folder: str | Path, labelled_stems: set[str]) -> list[Path]:
    """The image files of ``folder`` (and its subfolders); ``DataError`` when it is missing,
    holds no image, or holds masks: a mask subfolder, or images named like the labelled
    pairs (a pair belongs in ``--data`` only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError([f"{folder}: no such folder (--unlabeled takes a folder of images "
                         "without masks)"])
    problems = [f"{path}: a {path.name}/ subfolder in the unlabelled folder; --unlabeled "
                "takes images without masks (labelled pairs go in --data)"
                for path in sorted(folder.rglob("*"))
                if path.is_dir() and path.name.lower() in MASK_FOLDERS]
    files = list_inputs(folder)
    if not files and not problems:
        problems.append(f"{folder}: holds no image file (--unlabeled takes a folder of images "
                        "without masks)")
    problems += [f"{path}: named like the labelled pair {path.stem!r}; an image with a mask "
                 "belongs in --data only" for path in files if path.stem in labelled_stems]
    if problems:
        raise DataError(problems)
    return files


def verify_unlabeled(folder: str | Path, *, channels: int, fingerprint: dict,
                     labelled_stems: set[str], max_pixels: int = DEFAULT_MAX_PIXELS,
                     progress: bool = True) -> tuple[list[Path], list[tuple[int, int]], dict]:
    """Read every image of ``folder`` as training will: (files, their (height, width), the
    folder's summary for the fingerprint). ``DataError`` lists every problem, each naming
    its file: unreadable, the wrong channels or pixel type for the model, another bit depth
    than the labelled images (their normalisation would not fit), or only two values, like
    a mask."""
    files = find_unlabeled(folder, labelled_stems)
    labelled_dtypes = sorted(set(fingerprint.get("dtype") or []))

    def check(path: Path) -> tuple[str | None, tuple[int, int] | None, dict | None]:
        try:
            raw = read_raw(path, max_pixels)
            check_image(raw, channels, path)
        except ImageReadError as error:
            return str(error), None, None
        if labelled_dtypes and str(raw.dtype) not in labelled_dtypes:
            return (f"{path}: {raw.dtype} pixels, the labelled images' are "
                    f"{', '.join(labelled_dtypes)}: their normalisation would not fit; "
                    "convert the unlabelled images to the labelled images' type"), None, None
        flat = raw.reshape(-1) if raw.ndim == 2 else raw[..., :3].reshape(-1)
        sample = flat[:: max(1, flat.size // 4096)]
        if raw.ndim == 2 and np.unique(raw).size <= 2:
            return (f"{path}: holds only the values {np.unique(raw).tolist()}, like a mask; "
                    "--unlabeled takes images"), None, None
        return None, raw.shape[:2], {"dtype": str(raw.dtype), "sample": sample}

    problems, sizes, dtypes, samples = [], [], set(), []
    with ThreadPoolExecutor(max_workers=4) as pool:  # OpenCV decodes outside the GIL
        for problem, size, info in progress_bar(pool.map(check, files), total=len(files),
                                                desc="unlabelled images", unit="image",
                                                enabled=progress):
            if problem:
                problems.append(problem)
            else:
                sizes.append(size)
                dtypes.add(info["dtype"])
                samples.append(info["sample"])
    if problems:
        raise DataError(problems)
    pixels = np.concatenate(samples).astype(np.float64)
    heights, widths = zip(*sizes, strict=True)
    summary = {"folder": str(Path(folder)), "count": len(files),
               "median_size": [int(np.median(heights)), int(np.median(widths))],
               "dtype": sorted(dtypes),
               "intensity": {"p0.5": float(np.percentile(pixels, 0.5)),
                             "median": float(np.median(pixels)),
                             "p99.5": float(np.percentile(pixels, 99.5))}}
    logger.info("unlabelled: %d images in %s (median %d x %d)", len(files), folder,
                *summary["median_size"])
    return files, [tuple(s) for s in sizes], summary


# --------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------

def unlabeled_dataset(source: ImageSource, *, patch_size: int, batch_size: int,
                      seed: int = 0) -> tf.data.Dataset:
    """Endless batches of ``(weak, strong, valid)``: two standardised views of the same
    random crop (of an image drawn in proportion to its area) and ``valid``, 1 on real image
    and 0 on padding (an image smaller than the patch), ``(batch, patch, patch)``."""
    if len(source) == 0:
        raise ValueError("no unlabelled images")
    areas = np.array([h * w for h, w in source.sizes], dtype=np.float64)
    areas /= areas.sum()
    local = threading.local()  # albumentations pipelines hold state: one per worker thread

    def sample(element_seed: np.ndarray):
        if not hasattr(local, "weak"):
            local.crop = patch_sampler(patch_size)
            local.weak = augmentation_pipeline(custom=PRESETS["light"]())
            local.strong = augmentation_pipeline(custom=STRONG)
        element_seed = int(element_seed) & 0x7FFFFFFF
        index = int(np.random.default_rng(element_seed).choice(len(areas), p=areas))
        image = source.get(index)
        local.crop.set_random_seed(element_seed)
        local.weak.set_random_seed(element_seed + 1)
        local.strong.set_random_seed(element_seed + 2)
        ones = np.ones(image.shape[:2], np.uint16)
        patch = local.crop(image=image, mask=ones)
        weak = local.weak(image=patch["image"], mask=patch["mask"])
        strong = local.strong(image=weak["image"])["image"]
        standardize = source.normalization.standardize
        return (np.ascontiguousarray(standardize(weak["image"]), dtype=np.float32),
                np.ascontiguousarray(standardize(strong), dtype=np.float32),
                (weak["mask"] != IGNORE_LABEL).astype(np.float32))

    channels = source.channels

    def load(element_seed):
        weak, strong, valid = tf.numpy_function(
            sample, [element_seed], (tf.float32, tf.float32, tf.float32), stateful=False)
        weak.set_shape((patch_size, patch_size, channels))
        strong.set_shape((patch_size, patch_size, channels))
        valid.set_shape((patch_size, patch_size))
        return weak, strong, valid

    return (tf.data.Dataset.random(seed=seed)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def mixed_dataset(labelled: tf.data.Dataset, unlabelled: tf.data.Dataset) -> tf.data.Dataset:
    """``((images, weak, strong, valid), targets)``: what ``ConsistencyTraining`` trains on."""
    return tf.data.Dataset.zip(labelled, unlabelled).map(
        lambda pair, views: ((pair[0], *views), pair[1]))


# --------------------------------------------------------------------------
# pseudo-labels, the loss and the training step
# --------------------------------------------------------------------------

def pseudo_targets(probabilities, valid, confidence: float):
    """Targets, in the pipeline's ``(N, H, W, L + 1)`` form, from the weak views'
    ``probabilities`` (``(N, H, W, K)``; a sigmoid's ``K = 1`` is two labels): the one-hot
    most probable label, kept (its "valid" channel 1) where that label's probability is at
    least ``confidence`` and ``valid`` (``(N, H, W)``: real image, not padding) is set;
    elsewhere all zero, ignored."""
    probabilities = class_probabilities(ops.cast(probabilities, "float32"))
    labels = ops.argmax(probabilities, axis=-1)
    keep = ops.logical_and(ops.max(probabilities, axis=-1) >= confidence,
                           ops.cast(valid, "float32") > 0)
    keep = ops.cast(keep, "float32")[..., None]
    one_hot = ops.one_hot(labels, ops.shape(probabilities)[-1], dtype="float32") * keep
    return ops.concatenate([one_hot, keep], axis=-1)


def rampup(step, steps):
    """``exp(-5 (1 - t)^2)`` with ``t = step / steps`` (1 from ``steps`` on, and with
    ``steps`` 0)."""
    t = ops.clip(ops.cast(step, "float32") / ops.maximum(ops.cast(steps, "float32"), 1.0),
                 0.0, 1.0)
    return ops.where(ops.cast(steps, "float32") > 0, ops.exp(-5.0 * (1.0 - t) ** 2), 1.0)


class ConsistencyTraining(keras.Model):
    """Trains ``network`` on ``((images, weak, strong, valid), targets)`` batches (see the
    module docstring); validation batches are ``(images, targets)`` as usual.

    It is only the trainer: called, it is ``network``, and ``save`` saves ``network``, so a
    run's ``model.keras`` is the plain segmentation model that predict.py loads. Its
    checkpoints (``save_weights``) hold the network and the optimizer, as a supervised
    run's do.
    """

    def __init__(self, network: keras.Model, *, weight: float, confidence: float,
                 rampup_steps: int, **kwargs):
        super().__init__(name=network.name, **kwargs)
        self.network = network
        self.built = True  # as the network is: a checkpoint loads into it before any call
        self.weight, self.confidence = float(weight), float(confidence)
        self.rampup_steps = int(rampup_steps)
        self.supervised_tracker = keras.metrics.Mean(name="supervised_loss")
        self.unlabeled_tracker = keras.metrics.Mean(name="unlabeled_loss")
        self.confident_tracker = keras.metrics.Mean(name="confident")

    def unlabeled_loss(self, targets, probabilities):
        """The consistency term: the run's compiled loss, on pseudo-label ``targets``."""
        return keras.losses.get(self.loss)(targets, probabilities)

    def call(self, inputs, training=False):
        images = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.network(images, training=training)

    def save(self, filepath, *args, **kwargs):
        """Save the network (a ``.keras`` file that loads without unet_cbam's trainer)."""
        return self.network.save(filepath, *args, **kwargs)

    def train_step(self, data):
        """One step: pseudo-labels from the weak views, then the supervised loss and the
        weighted consistency loss of the strong views, in one forward pass (so batch
        normalisation sees labelled and unlabelled patches together, as in FixMatch)."""
        (images, weak, strong, valid), targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # The weak views are predicted in training mode, with their own batch statistics,
        # as FixMatch and UniMatch predict them: early in a short run the moving averages
        # lag behind the weights. (Batch normalisation's moving averages take this batch's
        # statistics in as well; one seed could not tell the two choices apart:
        # docs/benchmarks/label-efficiency.md.)
        teacher = tf.stop_gradient(self.network(weak, training=True))
        pseudo = pseudo_targets(teacher, valid, self.confidence)
        count = tf.shape(images)[0]
        with tf.GradientTape() as tape:
            both = self.network(tf.concat([images, strong], axis=0), training=True)
            predictions, student = both[:count], both[count:]
            supervised = self._compute_loss(x=images, y=targets, y_pred=predictions,
                                            training=True)  # scaled for the replicas
            unlabeled = self.unlabeled_loss(pseudo, student)  # unconfident: ignored
            weight = self.weight * rampup(self.optimizer.iterations, self.rampup_steps)
            loss = supervised + weight * unlabeled / replicas
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables,
                                           strict=True))
        self._loss_tracker.update_state(loss * replicas, sample_weight=count)
        self.supervised_tracker.update_state(supervised * replicas, sample_weight=count)
        self.unlabeled_tracker.update_state(unlabeled, sample_weight=count)
        self.confident_tracker.update_state(
            tf.reduce_sum(pseudo[..., -1]) / tf.maximum(tf.reduce_sum(valid), 1.0),
            sample_weight=count)
        return self.compute_metrics(images, targets, predictions)

    def test_step(self, data):
        """Validation as usual; the unlabelled logs are training's only."""
        return {name: value for name, value in super().test_step(data).items()
                if name not in LOGS}
