"""Splitting and the tf.data pipelines that feed training and validation.

Training draws an endless stream of random patches. A share of them (the
plan's ``foreground_oversampling``) is centred on a pixel of a foreground
class: the class is drawn by its weight (the plan's ``class_sampling``, which
favours rare classes), then an image that holds it; the other patches come
from an image picked with probability proportional to its area, anywhere in
it. Each image is padded to the patch size if smaller (padding is ignored by
the loss), cropped and augmented. Decoding, cropping and augmentation run in parallel workers;
batches are prefetched.

Targets are ``(H, W, L + 1)`` float32: a one-hot map over the ``L`` labels
(2 for binary: background, foreground) and a last channel that is 1 where the
pixel counts and 0 where it is ignored (ignore value, padding).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from unet_cbam.data.augment import augmentation_pipeline, patch_sampler
from unet_cbam.data.io import (
    BITDEPTH,
    IGNORE_LABEL,
    MaskCodec,
    Normalization,
    pad_to,
    preprocess,
    read_mask,
    read_raw,
    resize_image,
    resize_labels,
    scaled_size,
)
from unet_cbam.data.verify import Sample

AUTOTUNE = tf.data.AUTOTUNE


def split_samples(samples: Sequence[Sample], val_fraction: float, seed: int
                  ) -> tuple[list[Sample], list[Sample]]:
    """Deterministic split: the same samples, fraction and seed give the same split."""
    samples = sorted(samples, key=lambda s: s.stem)
    if val_fraction <= 0 or len(samples) < 2:
        return list(samples), []
    count = min(len(samples) - 1, max(1, round(len(samples) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(samples))
    val_ids = set(order[:count].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_ids]
    val = [s for i, s in enumerate(samples) if i in val_ids]
    return train, val


def kfold_split(samples: Sequence[Sample], folds: int, fold: int, seed: int
                ) -> tuple[list[Sample], list[Sample]]:
    """Fold ``fold`` of ``folds``: (train, val). The folds' validation sets are disjoint
    and together cover every sample; the same samples, count and seed give the same folds.
    """
    if len(samples) < folds:
        raise ValueError(f"folds {folds} is more than the {len(samples)} pairs; use at most "
                         f"{len(samples)} folds")
    samples = sorted(samples, key=lambda s: s.stem)
    order = np.random.default_rng(seed).permutation(len(samples))
    val_ids = set(np.array_split(order, folds)[fold].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_ids]
    val = [s for i, s in enumerate(samples) if i in val_ids]
    return train, val


class PairSource:
    """(image, labels) for each sample, from the in-memory cache or from disk.

    Images come preprocessed up to augmentation (``preprocess(...,
    standardize=False)``: in [0, 1]); ``normalization.standardize`` is the
    pipelines' last step. With ``scale`` below 1 every pair is resampled by it
    (the plan's training resolution): images by pixel-area averaging, labels by
    nearest label; ``native`` gives a pair at its own size.
    """

    def __init__(self, samples: Sequence[Sample], sizes: Sequence[tuple[int, int]],
                 codec: MaskCodec, channels: int,
                 cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 normalization: Normalization = BITDEPTH, scale: float = 1.0,
                 presence: np.ndarray | None = None):
        """``sizes``: (height, width) of each sample as stored, as verification found
        them; ``cache``: (preprocessed image, labels) by stem, already resampled;
        ``presence``: which labels each pair holds, ``(samples, labels)`` bool (read
        from the pairs when first needed if not given)."""
        if len(sizes) != len(samples):
            raise ValueError(f"{len(samples)} samples but {len(sizes)} sizes")
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.samples = list(samples)
        self.native_sizes = [tuple(size) for size in sizes]
        self.scale = float(scale)
        #: (height, width) of each pair as the pipelines see it (resampled).
        self.sizes = [scaled_size(h, w, self.scale) for h, w in self.native_sizes]
        self.codec = codec
        self.channels = channels
        self.cache = cache or {}
        self.normalization = normalization
        self._presence = presence

    @classmethod
    def from_report(cls, samples: Sequence[Sample], report, channels: int,
                    normalization: Normalization = BITDEPTH, scale: float = 1.0
                    ) -> PairSource:
        """Samples that passed ``verify_pairs``, with its sizes and codec, and its cached
        raw pixels preprocessed (and resampled by ``scale``)."""
        sizes = [(report.info[s.stem].height, report.info[s.stem].width) for s in samples]
        labels = report.codec.num_labels
        presence = np.array([report.info[s.stem].label_counts[:labels] > 0 for s in samples],
                            dtype=bool).reshape(len(samples), labels)
        source = cls(samples, sizes, report.codec, channels, None, normalization, scale,
                     presence)
        for index, sample in enumerate(samples):
            if report.cache and sample.stem in report.cache:
                raw, labels = report.cache[sample.stem]
                source.cache[sample.stem] = source._resample(index, preprocess(
                    raw, channels, sample.image_path, normalization, standardize=False), labels)
        return source

    def rescaled(self, scale: float) -> PairSource:
        """The same pairs resampled by ``scale`` (relative to their own size); cached
        pairs are resampled from this source's cache when it holds them at their own size."""
        source = PairSource(self.samples, self.native_sizes, self.codec, self.channels, None,
                            self.normalization, scale, self._presence)
        if self.scale == 1.0:
            for index, sample in enumerate(self.samples):
                if sample.stem in self.cache:
                    source.cache[sample.stem] = source._resample(index, *self.cache[sample.stem])
        return source

    def __len__(self) -> int:
        return len(self.samples)

    def presence(self) -> np.ndarray:
        """``(samples, labels)`` bool: whether each pair holds each label (at its own
        size, as verification counted them; read from the pairs if not given)."""
        if self._presence is None:
            labels = self.codec.num_labels
            self._presence = np.array(
                [np.bincount(np.minimum(self.get(i)[1].ravel(), labels),
                             minlength=labels + 1)[:labels] > 0 for i in range(len(self))],
                dtype=bool).reshape(len(self), labels)
        return self._presence

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` as training reads it: (image, labels), from the cache when held."""
        sample = self.samples[index]
        cached = self.cache.get(sample.stem)
        return cached if cached is not None else self._read(index)

    def native(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``get(index)`` at the pair's own size (read again from disk when resampled)."""
        return self.get(index) if self.scale == 1.0 else self._read_native(index)

    def _resample(self, index: int, image: np.ndarray, labels: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.sizes[index]
        image = resize_image(image, height, width)
        if image.ndim == 2:
            image = image[..., None]
        return image, resize_labels(labels, height, width)

    def _read_native(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image = preprocess(read_raw(sample.image_path), self.channels, sample.image_path,
                           self.normalization, standardize=False)
        return image, read_mask(sample.mask_path, self.codec)

    @functools.lru_cache(maxsize=8)  # noqa: B019 (one source per pipeline; bounded)
    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._resample(index, *self._read_native(index))


def to_targets(labels: tf.Tensor, num_labels: int) -> tf.Tensor:
    """uint16 labels ``(..., H, W)`` -> float32 ``(..., H, W, num_labels + 1)``."""
    labels = tf.cast(labels, tf.int32)
    valid = labels != int(IGNORE_LABEL)
    one_hot = tf.one_hot(tf.where(valid, labels, 0), num_labels, dtype=tf.float32)
    valid = tf.cast(valid, tf.float32)[..., None]
    return tf.concat([one_hot * valid, valid], axis=-1)


class PatchDraw:
    """Which pair a training patch comes from, and the label it is centred on (or None).

    With probability ``foreground_oversampling`` a foreground label (1 and up)
    is drawn by ``class_weights`` (one weight per label; label 0's is never
    used; None: every foreground label alike) among the labels some pair holds,
    then a pair holding it, in proportion to its area. Otherwise a pair in
    proportion to its area, and no label. With one foreground class this is
    nnU-Net's foreground oversampling.
    """

    def __init__(self, source: PairSource, foreground_oversampling: float,
                 class_weights: Sequence[float] | None = None):
        labels = source.codec.num_labels
        self.areas = np.array([h * w for h, w in source.sizes], dtype=np.float64)
        self.presence = source.presence()
        weights = np.ones(labels) if class_weights is None else np.asarray(
            class_weights, dtype=np.float64)
        if weights.shape != (labels,) or (weights < 0).any():
            raise ValueError(f"class_weights must be {labels} weights >= 0, one per label; "
                             f"got {list(class_weights or [])}")
        weights = weights.copy()
        weights[0] = 0.0
        weights *= self.presence.any(axis=0)  # a label no pair holds cannot be centred on
        self.class_weights = weights / weights.sum() if weights.sum() > 0 else None
        self.oversampling = float(foreground_oversampling)

    def __call__(self, rng: np.random.Generator) -> tuple[int, int | None]:
        """(pair index, label to centre on or None), from ``rng``."""
        if self.class_weights is not None and rng.random() < self.oversampling:
            label = int(rng.choice(len(self.class_weights), p=self.class_weights))
            areas = self.areas * self.presence[:, label]
            return int(rng.choice(len(areas), p=areas / areas.sum())), label
        return int(rng.choice(len(self.areas), p=self.areas / self.areas.sum())), None


def training_dataset(source: PairSource, *, patch_size: int, batch_size: int,
                     augmentation: str = "default", augmentations: list | None = None,
                     foreground_oversampling: float = 0.33,
                     class_weights: Sequence[float] | None = None,
                     seed: int = 0) -> tf.data.Dataset:
    """Endless batches of augmented patches: ``(images, targets)``.

    images: ``(batch_size, patch_size, patch_size, channels)`` float32, preprocessed;
    targets: ``(batch_size, patch_size, patch_size, num_labels + 1)``. Patches are
    drawn by ``PatchDraw(source, foreground_oversampling, class_weights)``.
    """
    if len(source) == 0:
        raise ValueError("no training samples")
    draw = PatchDraw(source, foreground_oversampling, class_weights)
    num_labels = source.codec.num_labels
    local = threading.local()  # albumentations pipelines hold state: one per worker thread

    def sample(element_seed: np.ndarray):
        if not hasattr(local, "crops"):
            local.crops = {}
            local.augment = augmentation_pipeline(augmentation, augmentations)
        element_seed = int(element_seed) & 0x7FFFFFFF
        index, label = draw(np.random.default_rng(element_seed))
        if label not in local.crops:
            local.crops[label] = patch_sampler(patch_size, label, num_labels)
        crop = local.crops[label]
        image, labels = source.get(index)
        crop.set_random_seed(element_seed)
        local.augment.set_random_seed(element_seed + 1)
        patch = crop(image=image, mask=labels)
        patch = local.augment(image=patch["image"], mask=patch["mask"])
        image = source.normalization.standardize(patch["image"])
        return (np.ascontiguousarray(image, dtype=np.float32),
                np.ascontiguousarray(patch["mask"], dtype=np.uint16))

    channels = source.channels

    def load(element_seed):
        image, labels = tf.numpy_function(sample, [element_seed], (tf.float32, tf.uint16),
                                          stateful=False)
        image.set_shape((patch_size, patch_size, channels))
        labels.set_shape((patch_size, patch_size))
        return image, to_targets(labels, num_labels)

    return (tf.data.Dataset.random(seed=seed)
            .map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
            .prefetch(AUTOTUNE))


def tile_origins(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of a non-overlapping grid covering ``height x width``."""
    return [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]


def validation_tiles(source: PairSource, patch_size: int) -> list[tuple[int, int, int]]:
    """(image index, top, left) of every validation patch (``validation_dataset``)."""
    return [(index, y, x) for index, (height, width) in enumerate(source.sizes)
            for y, x in tile_origins(height, width, patch_size)]


def validation_batches(source: PairSource, patch_size: int, batch_size: int) -> int:
    """Batches of one process's validation pass."""
    return max(1, math.ceil(len(validation_tiles(source, patch_size)) / batch_size))


def validation_dataset(source: PairSource, *, patch_size: int, batch_size: int,
                       shard: tuple[int, int] = (0, 1), multiple: int = 1,
                       batches: int | None = None) -> tf.data.Dataset:
    """Every validation pixel exactly once: each image cut into a grid of patches.

    Each grid cell is scored inside a patch full of real image: a border cell's
    patch is shifted back inside the image (the pixels it shares with the
    cell before are ignored), and an image smaller than a patch is mirrored out
    to it (the mirror is ignored), as ``inference.sliding_window_predict`` pads.
    Padding with zeros instead put an edge into the patch that training never
    showed: on CTC nuclei it made a trained model mark the zero band as
    foreground, and the monitored validation Dice fell from epoch 3 while the
    model, predicted as predict.py does, kept improving.

    ``shard=(i, n)``: the i-th of n equal shares of the patches (one per worker), after
    padding their count to a multiple of ``multiple`` (and of n) with patches of ignored
    pixels only, which no metric counts: under tf.distribute every worker must run the same
    number of equal batches.

    ``batches``: only the first this many batches (of this shard), the same ones on every
    pass. The dataset ends there, so an iterator is used up, never dropped part-way: Keras
    drops its validation iterator before each pass, and dropping one with batches still
    in flight waited for them (15 to 50 s a pass on Kvasir-SEG on the 2-core AVX2 EPYC,
    every other epoch, when ``fit(validation_steps=)`` stopped it after 13 of 22 batches).
    """
    tiles = validation_tiles(source, patch_size)
    index, count = shard
    multiple = math.lcm(multiple, count)
    tiles += [(-1, 0, 0)] * (-len(tiles) % multiple)
    tiles = np.asarray(tiles, dtype=np.int64).reshape(-1, 3)[index::count]
    if batches is not None:
        tiles = tiles[:max(1, batches) * batch_size]
    channels = source.channels

    def cut(tile: np.ndarray):
        index, y, x = (int(v) for v in tile)
        patch = np.zeros((patch_size, patch_size, channels), np.float32)
        target = np.full((patch_size, patch_size), IGNORE_LABEL, np.uint16)
        if index < 0:  # padding
            return patch, target
        image, labels = source.get(index)
        height, width = labels.shape
        top, left = min(y, max(0, height - patch_size)), min(x, max(0, width - patch_size))
        window = image[top:top + patch_size, left:left + patch_size].reshape(
            min(patch_size, height - top), min(patch_size, width - left), channels)
        patch[:] = source.normalization.standardize(pad_to(window, patch_size, patch_size))
        cell = labels[y:y + patch_size, x:x + patch_size]
        target[y - top:y - top + cell.shape[0], x - left:x - left + cell.shape[1]] = cell
        return patch, target

    num_labels = source.codec.num_labels

    def load(tile):
        image, labels = tf.numpy_function(cut, [tile], (tf.float32, tf.uint16), stateful=False)
        image.set_shape((patch_size, patch_size, channels))
        labels.set_shape((patch_size, patch_size))
        return image, to_targets(labels, num_labels)

    return (tf.data.Dataset.from_tensor_slices(tiles)
            .map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(AUTOTUNE))
