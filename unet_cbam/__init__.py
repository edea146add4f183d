"""unet_cbam: UNet with CBAM attention in its skip connections (Keras 3)."""

from unet_cbam.attention import attention_maps
from unet_cbam.config import ModelConfig
from unet_cbam.layers import CBAM, ChannelAttention, SpatialAttention
from unet_cbam.models import build_unet

__version__ = "0.1.0"

__all__ = [
    "CBAM",
    "ChannelAttention",
    "ModelConfig",
    "SpatialAttention",
    "attention_maps",
    "build_unet",
]
