"""Model building: encoders and the UNet builder."""

from unet_cbam.models.encoders import BACKBONES
from unet_cbam.models.unet import build_unet

__all__ = ["BACKBONES", "build_unet"]
