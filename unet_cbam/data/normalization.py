"""Intensity normalisation: how raw pixel values become the model's input.

A run's ``Normalization`` is decided once by the plan (``unet_cbam.plan``), saved in its
config (``DataConfig.normalization``) and applied by training and predict.py alike. This
module needs numpy alone, so the config can hold the type without loading image codecs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Float images may stray this far outside [0, 1] (rounding) and are clipped back.
FLOAT_TOLERANCE = 1e-3


class ImageReadError(ValueError):
    """A file that cannot be used, with the path in the message."""


def to_float(array: np.ndarray, path: str | Path = "") -> np.ndarray:
    """Scale by bit depth: uint8 / 255, uint16 / 65535.

    Float images have no bit depth to scale by: they are taken as they are if
    every value lies in [0, 1] (what the model sees), and refused otherwise,
    naming the range found, so a float TIFF in 0-255 can never reach the
    model unscaled.
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ImageReadError(f"{path}: float image with NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise ImageReadError(
                f"{path}: float image with values in [{low:.4g}, {high:.4g}]; float images "
                "must be scaled to [0, 1] (or saved as 8- or 16-bit integers)")
        return np.clip(values, 0.0, 1.0)
    raise ImageReadError(f"{path}: unsupported pixel type {array.dtype}")


NORMALIZE_MODES = ("bitdepth", "percentile", "zscore")


@dataclass(frozen=True)
class Normalization:
    """How raw pixel values become the model's input; frozen in the run's config.

    ``bitdepth``: divide by the largest value of the type (uint8 / 255,
    uint16 / 65535); float images must already lie in [0, 1].
    ``percentile``: clip each channel to ``[low, high]`` (the data set's 0.5th
    and 99.5th percentiles, in raw units) and scale that range to [0, 1].
    ``zscore``: clip and scale like ``percentile``, then subtract ``mean`` and
    divide by ``std`` (statistics of the clipped, scaled pixels), which is
    ``(clip(x) - mean_raw) / std_raw``: nnU-Net's scheme for data of a fixed
    intensity scale.

    The standardisation of ``zscore`` is a separate step (``standardize``)
    because augmentation (albumentations clips float images to [0, 1]) runs
    between the two in training; ``preprocess`` applies both.
    """

    mode: str = "bitdepth"
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZE_MODES:
            raise ValueError(f"normalization mode {self.mode!r} is not one of "
                             f"{', '.join(NORMALIZE_MODES)}")
        if self.mode != "bitdepth":
            if not self.low or len(self.low) != len(self.high):
                raise ValueError(f"normalization {self.mode}: needs low and high of one length "
                                 f"per channel, got low {list(self.low)}, high {list(self.high)}")
            if any(h <= lo for lo, h in zip(self.low, self.high, strict=True)):
                raise ValueError(f"normalization {self.mode}: every high must be above its low, "
                                 f"got low {list(self.low)}, high {list(self.high)}")
        if self.std <= 0:
            raise ValueError(f"normalization std {self.std!r} must be > 0")

    @classmethod
    def from_config(cls, value: dict | None) -> Normalization:
        """From ``data.normalization`` of a run config; none (older runs): bit depth."""
        if not value:
            return cls()
        try:
            return cls(mode=value.get("mode", "bitdepth"),
                       low=tuple(float(v) for v in value.get("low") or ()),
                       high=tuple(float(v) for v in value.get("high") or ()),
                       mean=float(value.get("mean", 0.0)), std=float(value.get("std", 1.0)))
        except (TypeError, AttributeError) as error:
            raise ValueError(f"normalization {value!r}: {error}") from None

    def to_config(self) -> dict:
        """The config section: mode, and the statistics the mode uses."""
        if self.mode == "bitdepth":
            return {"mode": "bitdepth"}
        values = {"mode": self.mode, "low": list(self.low), "high": list(self.high)}
        if self.mode == "zscore":
            values.update(mean=self.mean, std=self.std)
        return values

    def to_unit(self, raw: np.ndarray, path: str | Path = "") -> np.ndarray:
        """Raw pixels ``(H, W[, C])`` -> float32 in [0, 1], as many channels as stored."""
        if self.mode == "bitdepth":
            return to_float(raw, path)
        if raw.dtype.kind not in "uif":
            raise ImageReadError(f"{path}: unsupported pixel type {raw.dtype}")
        channels = 1 if raw.ndim == 2 else raw.shape[2]
        low, high = self.low, self.high
        if len(low) == 1:
            low, high = low * channels, high * channels
        if len(low) != channels:
            raise ImageReadError(
                f"{path}: image has {channels} channel(s); the run's {self.mode} normalisation "
                f"was fitted on {len(self.low)}-channel images")
        values = raw.astype(np.float32)
        if raw.dtype.kind == "f" and not np.isfinite(values).all():
            raise ImageReadError(f"{path}: float image with NaN or infinite values")
        low_array = np.asarray(low, np.float32)
        span = np.asarray(high, np.float32) - low_array
        if raw.ndim == 2:
            low_array, span = low_array[0], span[0]
        values -= low_array
        values /= span
        return np.clip(values, 0.0, 1.0, out=values)

    def standardize(self, image: np.ndarray) -> np.ndarray:
        """The step after augmentation: z-score for ``zscore``, nothing otherwise."""
        if self.mode != "zscore":
            return image
        return (image - np.float32(self.mean)) / np.float32(self.std)


BITDEPTH = Normalization()
