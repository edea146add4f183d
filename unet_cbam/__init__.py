"""unet_cbam: UNet with CBAM attention in its skip connections (Keras 3).

Importing the package is cheap: the names below are loaded on first use
(PEP 562), so ``import unet_cbam.config`` or a CLI's ``--help`` never starts
TensorFlow. ``import unet_cbam`` followed by any use of a layer registers the
custom layers for ``keras.saving.load_model``.
"""

import importlib
import os

# Set here, once, because every module of the package is imported after this file:
# albumentations checks PyPI for updates on import (a batch tool must not phone home),
# and TensorFlow's C++ start-up chatter (INFO and WARNING) is hidden unless asked for.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's CPU allocator is plain malloc by default; glibc serves blocks of 32 MiB and
# more (a 256x256x16 float32 batch of 8 is exactly that) with fresh mmap()s, so every such
# tensor page-faults all of its memory again and a full-size element-wise op took 21 ms
# instead of 10. TensorFlow's own BFC pool (the allocator it uses on GPUs) keeps freed
# blocks for reuse. Read when TensorFlow allocates its first tensor, so this works unless
# TensorFlow already ran before unet_cbam was imported; TF_CPU_ALLOCATOR_USE_BFC=false
# turns it off (README, "CPU memory allocator"; benchmarks/allocator.py).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

__version__ = "0.1.0"

_LAZY = {
    "CBAM": "unet_cbam.layers",
    "ChannelAttention": "unet_cbam.layers",
    "SpatialAttention": "unet_cbam.layers",
    "PixelNormalization": "unet_cbam.layers",
    "ModelConfig": "unet_cbam.config",
    "RunConfig": "unet_cbam.config",
    "RunFolder": "unet_cbam.run",
    "load_model": "unet_cbam.run",
    "attention_maps": "unet_cbam.attention",
    "build_unet": "unet_cbam.models",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unet_cbam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
