"""What a trained model attends to: the CBAM gates at each level where the model has them
(on the skips, after the decoder stages or after the encoder stages)."""

from __future__ import annotations

import re
import weakref

import keras
import numpy as np

from unet_cbam.layers import ChannelAttention, SpatialAttention
from unet_cbam.layers.cbam import AttentionLayer

#: How models saved before attention layers had a ``level`` name them.
_LEGACY_NAME = re.compile(r"^(?:skip|decoder|encoder)(\d+)_")
# Sub-models reading the skip tensors, built once per model (building one per call retraces).
_SKIP_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attention_layers(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """The model's attention layers keyed by level (stride ``2**level``): each layer's
    ``level``; a model saved before layers had one is read by its layers' names
    (``skip2_cbam``: level 2)."""
    found = {}
    for layer in model.layers:
        if not isinstance(layer, AttentionLayer):
            continue
        level = layer.level
        if level is None:
            match = _LEGACY_NAME.match(layer.name)
            if match is None:
                continue
            level = int(match.group(1))
        found[level] = layer
    return dict(sorted(found.items()))


def attention_maps(model: keras.Model, images: np.ndarray, batch_size: int = 4
                   ) -> dict[int, dict[str, np.ndarray]]:
    """Attention of ``model`` on ``images``, for each level that has it.

    Args:
        model: a model from ``build_unet`` (or loaded from a ``.keras`` file)
            with attention "channel", "spatial" or "cbam".
        images: ``(N, H, W, C)`` in the model's input range, H and W
            divisible by the model's ``2**depth``.
        batch_size: images per forward pass.

    Returns:
        ``{level: {"spatial": (N, H / 2**level, W / 2**level),
        "channel": (N, C_level)}}`` as float32 arrays in (0, 1); a level only
        has the gates its attention layer computes ("channel" has no spatial
        map, "spatial" no channel weights). For CBAM the spatial map is the one
        computed after channel attention, as in the forward pass.
    """
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no attention layers (attention 'none'?)")
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {images.shape}")
    if model not in _SKIP_MODELS:
        _SKIP_MODELS[model] = keras.Model(model.inputs, [layer.input for layer in layers.values()])
    skip_values = _SKIP_MODELS[model].predict(images, batch_size=batch_size, verbose=0)
    if len(layers) == 1:
        skip_values = [skip_values]

    maps: dict[int, dict[str, np.ndarray]] = {}
    for (level, layer), skips in zip(layers.items(), skip_values, strict=True):
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(skips), batch_size):
            for key, value in _gates(layer, skips[start:start + batch_size]).items():
                parts.setdefault(key, []).append(value)
        maps[level] = {key: np.concatenate(values) for key, values in parts.items()}
    return maps


def _gates(layer: keras.layers.Layer, skips: np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(layer, ChannelAttention):
        return {"channel": _numpy(layer.gate(skips))[:, 0, 0, :]}
    if isinstance(layer, SpatialAttention):
        return {"spatial": _numpy(layer.gate(skips))[..., 0]}
    channel = layer.channel_attention.gate(skips)
    refined = skips * keras.ops.cast(channel, skips.dtype)
    return {"channel": _numpy(channel)[:, 0, 0, :],
            "spatial": _numpy(layer.spatial_attention.gate(refined))[..., 0]}


def _numpy(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype="float32")
