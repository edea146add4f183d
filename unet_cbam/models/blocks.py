"""The building blocks every encoder and the decoder share: the double convolution and
the attention on one tensor. (Their own module, so the encoders and the UNet builder both
import them without importing each other.)"""

from __future__ import annotations

import keras

from unet_cbam.config import ModelConfig
from unet_cbam.layers import create_attention


def conv_block(x: keras.KerasTensor, filters: int, config: ModelConfig, name: str
               ) -> keras.KerasTensor:
    """Two 3x3 convolutions, each followed by batch norm (optional) and ReLU."""
    for index in (1, 2):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=not config.batch_norm,
            kernel_initializer="he_normal", name=f"{name}_conv{index}",
        )(x)
        if config.batch_norm:
            # momentum 0.9 (PyTorch's default) instead of Keras' 0.99: the moving
            # statistics settle within tens of steps, which short runs need.
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{index}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{index}")(x)
    return x


def attention_block(skip: keras.KerasTensor, config: ModelConfig, position: str, level: int
                    ) -> keras.KerasTensor:
    """Apply ``config.attention`` to one tensor at ``position`` (skip, decoder or encoder)
    and ``level`` (stride ``2**level``), identity for "none"; with ``attention_identity``,
    ``skip + attention(skip)``. Its layers are named ``<position><level>_...``."""
    prefix = f"{position}{level}"
    layer = create_attention(
        config.attention, reduction_ratio=config.reduction_ratio,
        spatial_kernel_size=config.spatial_kernel_size, variant=config.cbam_variant,
        prefix=prefix, level=level)
    if layer is None:
        return skip
    if config.attention_identity:
        return keras.layers.Add(name=f"{prefix}_identity")([skip, layer(skip)])
    return layer(skip)
