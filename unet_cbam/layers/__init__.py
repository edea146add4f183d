"""Custom Keras layers, all registered for safe `.keras` loading."""

from unet_cbam.layers.cbam import CBAM, ChannelAttention, SpatialAttention
from unet_cbam.layers.normalization import PixelNormalization

__all__ = ["CBAM", "ChannelAttention", "SpatialAttention", "PixelNormalization"]
