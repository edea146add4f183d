"""Convolutional Block Attention Module (CBAM) as Keras 3 layers.

Woo, Park, Lee and Kweon, "CBAM: Convolutional Block Attention Module",
ECCV 2018 (arXiv:1807.06521):

    F'  = M_c(F) * F        M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))
    F'' = M_s(F') * F'      M_s(F) = sigmoid(conv_kxk([mean_c(F); max_c(F)]))

Every layer exposes ``gate(inputs)``, the attention weights in float32, and
``call(inputs)``, the inputs multiplied by that gate. ``attention_maps`` uses
the gates to show what a trained model attends to.

Under a ``mixed_float16`` policy the pooling, the MLP, the spatial convolution
and the sigmoid all run in float32 (their sublayers are pinned to float32), so
sums over large feature maps cannot overflow and the gate keeps its full (0, 1)
range; only the final product is computed in the layer's compute dtype.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import ops

from unet_cbam.config import DEFAULT_REDUCTION_RATIO

VARIANTS = ("paper", "blog")


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def _check_reduction_ratio(reduction_ratio: int) -> int:
    if int(reduction_ratio) != reduction_ratio or reduction_ratio < 1:
        raise ValueError(f"reduction_ratio must be an integer >= 1, got {reduction_ratio!r}")
    return int(reduction_ratio)


def _check_kernel_size(kernel_size: int) -> int:
    if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    return int(kernel_size)


def _float32(tensor):
    """``tensor`` in float32, without a cast op when it already is (the default policy)."""
    return tensor if keras.backend.standardize_dtype(tensor.dtype) == "float32" \
        else ops.cast(tensor, "float32")


def _like(gate, inputs):
    """The float32 ``gate`` in the dtype of ``inputs`` (no cast op under float32)."""
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    return gate if dtype == "float32" else ops.cast(gate, dtype)


#: Side of the pixel blocks ``blocked_conv`` folds into channels.
BLOCK = 4


@functools.lru_cache(maxsize=8)
def _blocked_kernel_index(kernel_size: int, channels: int, block: int) -> tuple[np.ndarray, int]:
    """Where each weight of the blocked kernel comes from in the flat ``k x k x C x 1``
    kernel (``k * k * C``: a zero), and the blocked kernel's side."""
    radius = kernel_size // 2
    reach = -(-radius // block)
    side = 2 * reach + 1
    index = np.full((side, side, block * block * channels, block * block),
                    kernel_size * kernel_size * channels, np.int32)
    for by in range(-reach, reach + 1):
        for bx in range(-reach, reach + 1):
            for p in range(block):
                for q in range(block):
                    for a in range(block):
                        for b in range(block):
                            dy, dx = block * by + p - a, block * bx + q - b
                            if abs(dy) > radius or abs(dx) > radius:
                                continue
                            for c in range(channels):
                                index[by + reach, bx + reach, (p * block + q) * channels + c,
                                      a * block + b] = ((dy + radius) * kernel_size
                                                        + dx + radius) * channels + c
    return index, side


def blocked_conv(inputs, kernel, bias=None, block: int = BLOCK):
    """``conv2d(inputs, kernel, padding="same") + bias`` for a one-filter kernel, computed
    on ``block x block`` pixel blocks folded into channels.

    The spatial gate's 7x7 convolution has 2 input channels and 1 output: CPU convolution
    kernels cannot vectorise that, and at full resolution it cost twice a 3x3 16->16
    convolution of the UNet. Folded (space-to-depth), it is a 3x3 convolution from 32 to 16
    channels on a 4x smaller grid, about 6x faster here, with the same weights and the same
    result up to the order of the sums. The input is zero-padded to whole blocks, which is
    what "same" padding does at the border anyway, and cropped back.
    """
    kernel_size, channels = int(kernel.shape[0]), int(kernel.shape[2])
    index, side = _blocked_kernel_index(kernel_size, channels, block)
    flat = ops.concatenate([ops.reshape(kernel, (-1,)), ops.zeros((1,), kernel.dtype)])
    blocked_kernel = ops.take(flat, index)
    shape = ops.shape(inputs)
    height, width = shape[1], shape[2]
    # (block - n % block) % block, not (-n) % block: a negative remainder is rounded the
    # other way by ONNX's Mod, which would crop instead of pad in an exported model.
    padded = ops.pad(inputs, [[0, 0], [0, (block - height % block) % block],
                              [0, (block - width % block) % block], [0, 0]])
    rows, cols = ops.shape(padded)[1] // block, ops.shape(padded)[2] // block
    folded = ops.reshape(padded, (shape[0], rows, block, cols, block, channels))
    folded = ops.reshape(ops.transpose(folded, (0, 1, 3, 2, 4, 5)),
                         (shape[0], rows, cols, block * block * channels))
    output = ops.conv(folded, blocked_kernel, padding="same")
    output = ops.reshape(output, (shape[0], rows, cols, block, block))
    output = ops.reshape(ops.transpose(output, (0, 1, 3, 2, 4)),
                         (shape[0], rows * block, cols * block, 1))[:, :height, :width, :]
    return output if bias is None else output + bias


class _BlockedConv2D(keras.layers.Conv2D):
    """The spatial gate's one-filter "same" convolution, computed by ``blocked_conv``.

    A Conv2D with Conv2D's weights (the same names and shapes: models saved before
    load unchanged); it is created by ``SpatialAttention.build``, never from a config.
    """

    def call(self, inputs):
        return blocked_conv(inputs, self.kernel, self.bias)


class AttentionLayer(keras.layers.Layer):
    """What every attention layer of this package has: the ``level`` it sits at in a model
    (its input's stride is ``2**level``; None outside a model), which
    ``unet_cbam.attention`` reads, and saves with the layer."""

    def __init__(self, level: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.level = None if level is None else int(level)

    def get_config(self):
        config = super().get_config()
        config.update(level=self.level)
        return config


@keras.saving.register_keras_serializable(package="unet_cbam")
class ChannelAttention(AttentionLayer):
    """Channel attention: which feature maps matter.

    One MLP (``channels -> max(1, channels // reduction_ratio) -> channels``)
    is shared by the average-pooled and the max-pooled channel descriptors;
    its two outputs are summed and passed through a sigmoid.

    Args:
        reduction_ratio: how much the MLP's hidden layer is narrower than the
            number of channels (the paper uses 16; the default, 8, suits the
            narrow skips of a small UNet: 16 channels keep a hidden layer of 2).
        variant: ``"paper"`` (default) has a ReLU after the first Dense layer
            only, as in the paper. ``"blog"`` reproduces the widely copied
            Keras snippet this project started from, which also puts a ReLU on
            the second Dense layer: both MLP outputs are then >= 0, so every
            gate is >= sigmoid(0) = 0.5 and the layer can never suppress a
            channel by more than half. It exists for comparisons only.

    Input shape: ``(batch, height, width, channels)``; the channel count is
    read from the input. Output shape: the same.
    """

    def __init__(self, reduction_ratio: int = DEFAULT_REDUCTION_RATIO, variant: str = "paper",
                 **kwargs):
        super().__init__(**kwargs)
        self.reduction_ratio = _check_reduction_ratio(reduction_ratio)
        self.variant = _check_variant(variant)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("ChannelAttention needs a known channel count (last axis)")
        hidden = max(1, channels // self.reduction_ratio)
        # The blog snippet initialises with he_normal; the paper does not say.
        initializer = "he_normal" if self.variant == "blog" else "glorot_uniform"
        self.hidden_dense = keras.layers.Dense(
            hidden, activation="relu", kernel_initializer=initializer,
            dtype="float32", name="mlp_hidden",
        )
        self.output_dense = keras.layers.Dense(
            channels, activation="relu" if self.variant == "blog" else None,
            kernel_initializer=initializer, dtype="float32", name="mlp_output",
        )
        self.hidden_dense.build((None, channels))
        self.output_dense.build((None, hidden))

    def _mlp(self, descriptor):
        return self.output_dense(self.hidden_dense(descriptor))

    def gate(self, inputs):
        """Channel weights in (0, 1), float32, shape ``(batch, 1, 1, channels)``.

        The two descriptors go through the shared MLP together, stacked as
        ``(batch, 2, channels)``: one pair of matrix products instead of two.
        """
        if not self.built:
            self.build(inputs.shape)
        features = _float32(inputs)
        descriptors = ops.stack([ops.mean(features, axis=(1, 2)),
                                 ops.max(features, axis=(1, 2))], axis=1)
        weights = ops.sigmoid(ops.sum(self._mlp(descriptors), axis=1))
        return weights[:, None, None, :]

    def call(self, inputs):
        return inputs * _like(self.gate(inputs), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(reduction_ratio=self.reduction_ratio, variant=self.variant)
        return config


@keras.saving.register_keras_serializable(package="unet_cbam")
class SpatialAttention(AttentionLayer):
    """Spatial attention: where the informative pixels are.

    The channel-wise mean and max maps are concatenated and convolved by one
    ``kernel_size x kernel_size`` filter, then passed through a sigmoid.

    Args:
        kernel_size: side of the convolution (the paper's best is 7).
        variant: ``"paper"`` (default): the convolution has a bias.
            ``"blog"``: as in the original Keras snippet, no bias and
            ``he_normal`` initialisation.

    Input shape: ``(batch, height, width, channels)``. Output shape: the same.
    """

    def __init__(self, kernel_size: int = 7, variant: str = "paper", **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.variant = _check_variant(variant)

    def build(self, input_shape):
        blog = self.variant == "blog"
        self.conv = _BlockedConv2D(
            1, self.kernel_size, padding="same", activation=None,
            use_bias=not blog,
            kernel_initializer="he_normal" if blog else "glorot_uniform",
            dtype="float32", name="conv",
        )
        self.conv.build((None, None, None, 2))

    def gate(self, inputs):
        """Spatial weights in (0, 1), float32, shape ``(batch, height, width, 1)``."""
        if not self.built:
            self.build(inputs.shape)
        features = _float32(inputs)
        descriptor = ops.concatenate(
            [ops.mean(features, axis=-1, keepdims=True), ops.max(features, axis=-1, keepdims=True)],
            axis=-1,
        )
        return ops.sigmoid(self.conv(descriptor))

    def call(self, inputs):
        return inputs * _like(self.gate(inputs), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, variant=self.variant)
        return config


@keras.saving.register_keras_serializable(package="unet_cbam")
class CBAM(AttentionLayer):
    """Convolutional Block Attention Module: channel attention, then spatial.

    Args:
        reduction_ratio: passed to :class:`ChannelAttention`.
        spatial_kernel_size: passed to :class:`SpatialAttention`.
        variant: ``"paper"`` (default) or ``"blog"``, passed to both; see
            :class:`ChannelAttention` for what the blog variant gets wrong.

    Input shape: ``(batch, height, width, channels)``. Output shape: the same.
    """

    def __init__(self, reduction_ratio: int = DEFAULT_REDUCTION_RATIO,
                 spatial_kernel_size: int = 7, variant: str = "paper", **kwargs):
        super().__init__(**kwargs)
        self.reduction_ratio = _check_reduction_ratio(reduction_ratio)
        self.spatial_kernel_size = _check_kernel_size(spatial_kernel_size)
        self.variant = _check_variant(variant)

    def build(self, input_shape):
        self.channel_attention = ChannelAttention(
            self.reduction_ratio, self.variant, dtype=self.dtype_policy, name="channel_attention",
        )
        self.spatial_attention = SpatialAttention(
            self.spatial_kernel_size, self.variant, dtype=self.dtype_policy,
            name="spatial_attention",
        )
        self.channel_attention.build(input_shape)
        self.spatial_attention.build(input_shape)

    def call(self, inputs):
        return self.spatial_attention(self.channel_attention(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            reduction_ratio=self.reduction_ratio,
            spatial_kernel_size=self.spatial_kernel_size,
            variant=self.variant,
        )
        return config

