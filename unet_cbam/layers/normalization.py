"""Map images in [0, 1] to the input range a pretrained encoder expects."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="unet_cbam")
class PixelNormalization(keras.layers.Layer):
    """``(x[..., order] * scale - mean) / std`` per channel.

    The data pipeline gives every model images in [0, 1]; pretrained
    encoders were trained on other ranges (0-255, [-1, 1], ImageNet mean and
    standard deviation, Caffe's BGR order). Doing the conversion inside the
    model keeps one preprocessing function for training and prediction.
    Keras' ``Rescaling`` cannot reverse the channel order (Caffe/VGG), hence
    this layer.

    Args:
        scale: multiplies the input first (255 for 0-255 encoders).
        mean: per-channel value (or one value for all) subtracted after scaling.
        std: per-channel value (or one value for all) divided by last.
        reverse_channels: RGB -> BGR before everything else (Caffe weights).
    """

    def __init__(self, scale: float = 1.0, mean: Sequence[float] | float = 0.0,
                 std: Sequence[float] | float = 1.0, reverse_channels: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.mean = [float(m) for m in mean] if isinstance(mean, Sequence) else float(mean)
        self.std = [float(s) for s in std] if isinstance(std, Sequence) else float(std)
        if any(s == 0 for s in (self.std if isinstance(self.std, list) else [self.std])):
            raise ValueError(f"std must not contain 0, got {std!r}")
        self.reverse_channels = bool(reverse_channels)

    def call(self, inputs):
        x = ops.flip(inputs, axis=-1) if self.reverse_channels else inputs
        mean = ops.convert_to_tensor(self.mean, dtype=x.dtype)
        std = ops.convert_to_tensor(self.std, dtype=x.dtype)
        return (x * self.scale - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, mean=self.mean, std=self.std,
                      reverse_channels=self.reverse_channels)
        return config
