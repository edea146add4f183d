"""`build_unet(config)`: the one model builder used by training, prediction,
notebooks and benchmarks.

Layout (level ``l`` = stride ``2**l``; the plain encoder has skips at levels
``0 .. depth-1``, a backbone at ``1 .. depth-1``)::

    image -> encoder -> bottleneck [-> dropout]
    for level = depth-1 .. 0 (decoder_stage0 is the deepest):
        x = upsample(x)                        decoder_stage{s}_upsample
        x = concat(x, attention(skip[level]))  skip{level}_{cbam|channel_attention|...}
        x = conv_block(x)                      decoder_stage{s}_conv1, _conv2
    head: 1x1 conv -> sigmoid (1 class) or softmax (N classes), always float32

Attention goes where ``attention_position`` says, at ``attention_levels``:
on the skips (``skip{level}_cbam``, the default), after each decoder stage
(``decoder{level}_cbam``) or after each encoder stage, before it is pooled and
skipped (``encoder{level}_cbam``; inside the backbone's graph for backbones).
"""

from __future__ import annotations

import keras

from unet_cbam.config import ModelConfig
from unet_cbam.models.blocks import attention_block, conv_block
from unet_cbam.models.encoders import build_encoder


def build_unet(config: ModelConfig) -> keras.Model:
    """Build the UNet described by ``config``.

    Input: ``(batch, height, width, config.input_channels)`` in [0, 1], with
    height and width divisible by ``config.divisor``. Output: probabilities,
    ``(batch, height, width, config.num_classes)``, float32 even under a mixed
    precision policy.
    """
    height, width = config.input_size or (None, None)
    image = keras.Input((height, width, config.input_channels), name="image")
    x, skips = build_encoder(image, config)
    if config.dropout > 0:
        x = keras.layers.Dropout(config.dropout, name="bottleneck_dropout")(x)

    depth = config.resolved_depth
    attended = set(config.attended_levels)
    for stage, level in enumerate(reversed(range(depth))):
        filters = config.base_filters * 2**level
        name = f"decoder_stage{stage}"
        x = _upsample(x, filters, config.upsampling, f"{name}_upsample")
        if level in skips:
            skip = skips[level]
            if config.attention_position == "skip" and level in attended:
                skip = attention_block(skip, config, "skip", level)
            x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = conv_block(x, filters, config, name)
        if config.attention_position == "decoder" and level in attended:
            x = attention_block(x, config, "decoder", level)

    binary = config.classes == 1
    x = keras.layers.Conv2D(config.classes, 1, name="head_conv")(x)
    probabilities = keras.layers.Activation(
        "sigmoid" if binary else "softmax", dtype="float32", name="head")(x)
    name = f"unet_{config.encoder}_{config.attention}"
    return keras.Model(image, probabilities, name=name)


def _upsample(x: keras.KerasTensor, filters: int, mode: str, name: str) -> keras.KerasTensor:
    if mode == "transpose":
        return keras.layers.Conv2DTranspose(filters, 2, strides=2, name=name)(x)
    return keras.layers.UpSampling2D(2, interpolation=mode, name=name)(x)
