"""One factory from attention names to layers (as timm's ``create_attn``).

The model builder asks for ``"cbam"`` and gets a CBAM layer named
``<prefix>_cbam``; a new attention layer is one entry in ``ATTENTION_LAYERS``.
"""

from __future__ import annotations

import inspect
import re

import keras

from unet_cbam.config import DEFAULT_REDUCTION_RATIO
from unet_cbam.layers.cbam import CBAM, ChannelAttention, SpatialAttention

#: attention name -> layer class; "none" means no layer.
ATTENTION_LAYERS: dict[str, type[keras.layers.Layer]] = {
    "channel": ChannelAttention,
    "spatial": SpatialAttention,
    "cbam": CBAM,
}


def layer_suffix(layer_class: type) -> str:
    """``ChannelAttention`` -> ``channel_attention``, ``CBAM`` -> ``cbam``."""
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", layer_class.__name__).lower()


def create_attention(kind: str, *, reduction_ratio: int = DEFAULT_REDUCTION_RATIO,
                     spatial_kernel_size: int = 7, variant: str = "paper",
                     prefix: str | None = None, level: int | None = None
                     ) -> keras.layers.Layer | None:
    """The attention layer called ``kind``, or None for ``"none"``.

    Each layer takes the options it has: channel attention the reduction
    ratio, spatial attention the kernel size, CBAM both. The layer is named
    ``<prefix>_<suffix>`` (e.g. ``skip2_cbam``) when a prefix is given, and knows its
    ``level`` in the model (``unet_cbam.attention`` reads it).
    """
    if kind == "none":
        return None
    if kind not in ATTENTION_LAYERS:
        raise ValueError(f"attention {kind!r} is not one of none, "
                         f"{', '.join(ATTENTION_LAYERS)}")
    layer_class = ATTENTION_LAYERS[kind]
    options = {"reduction_ratio": reduction_ratio, "kernel_size": spatial_kernel_size,
               "spatial_kernel_size": spatial_kernel_size, "variant": variant}
    parameters = inspect.signature(layer_class).parameters
    accepted = {name: value for name, value in options.items() if name in parameters}
    name = f"{prefix}_{layer_suffix(layer_class)}" if prefix else None
    return layer_class(**accepted, level=level, name=name)
