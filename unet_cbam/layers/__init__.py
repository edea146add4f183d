"""Custom Keras layers, all registered for safe `.keras` loading."""

from unet_cbam.layers.cbam import CBAM, ChannelAttention, SpatialAttention
from unet_cbam.layers.factory import ATTENTION_LAYERS, create_attention
from unet_cbam.layers.normalization import PixelNormalization

__all__ = ["ATTENTION_LAYERS", "CBAM", "ChannelAttention", "PixelNormalization",
           "SpatialAttention", "create_attention"]
