"""Numeric precision: float32, or mixed bfloat16 / float16, chosen for the hardware.

``--precision auto`` picks by rule, and says why:

- CPUs with AVX512_BF16 or AMX (bfloat16 units): mixed bfloat16. Its accuracy
  parity with float32 was measured on such a CPU (ISBI benchmark, 3 seeds,
  2026-12-03: membrane Dice 0.810 +- 0.001 against 0.809 +- 0.002, within the
  0.003 asked for; ``benchmarks/results/isbi2012/isbi2012-float32-bfloat16.json``).
- GPUs of compute capability 7.0 or more (tensor cores): mixed float16
  (Keras scales the loss). Ampere and newer (8.0+) also have bfloat16 tensor
  cores, but bfloat16's parity has not been measured on a GPU (none was
  available), so ``auto`` does not pick it there (``BFLOAT16_PARITY_MEASURED``);
  ``--precision bfloat16`` does.
- Everything else: float32 (float16 and bfloat16 without hardware support are
  emulated, slower than float32).

The gates of CBAM and the head stay float32 under every policy.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
#: precision -> Keras dtype policy
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
#: Where bfloat16 training and prediction were measured within 0.003 membrane Dice of
#: float32 on the ISBI benchmark (3 seeds) on hardware with bfloat16 units: on a CPU with
#: AVX512_BF16 (2026-12-03, ``python -m benchmarks.isbi2012 --models unet-cbam --precisions
#: float32 bfloat16``), not yet on a GPU.
BFLOAT16_PARITY_MEASURED = {"cpu": True, "gpu": False}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo), empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the visible GPUs (TensorFlow's device details)."""
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        found.append(tuple(capability) if capability else (0, 0))
    return found


def choose_precision(requested: str, gpus: list[tuple[int, int]] | None = None,
                     flags: set[str] | None = None) -> tuple[str, str]:
    """(float32 | bfloat16 | float16, reason) for ``requested`` on this hardware."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    gpus = gpu_capabilities() if gpus is None else gpus
    flags = cpu_flags() if flags is None else flags
    if requested != "auto":
        supported = {"float32": True,
                     "bfloat16": (bool(gpus) and min(gpus) >= (8, 0)) or
                     (not gpus and any(flag in flags for flag in BF16_CPU_FLAGS)),
                     "float16": bool(gpus) and min(gpus) >= (7, 0)}
        if not supported[requested]:
            logger.warning("precision %s: this %s has no %s units; it runs emulated, slower "
                           "than float32", requested, "GPU" if gpus else "CPU", requested)
        return requested, "asked for"
    if gpus:
        lowest = min(gpus)
        shown = f"GPU compute capability {lowest[0]}.{lowest[1]}"
        if lowest >= (8, 0) and BFLOAT16_PARITY_MEASURED["gpu"]:
            return "bfloat16", f"{shown}: bfloat16 tensor cores"
        if lowest >= (7, 0):
            return "float16", (f"{shown}: float16 tensor cores"
                               + ("; bfloat16's accuracy parity is not measured on a GPU yet"
                                  if lowest >= (8, 0) else ""))
        return "float32", f"{shown}: no tensor cores"
    units = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if units and BFLOAT16_PARITY_MEASURED["cpu"]:
        return "bfloat16", f"CPU with {', '.join(units)}: bfloat16 units"
    if units:
        return "float32", (f"CPU with {', '.join(units)}, but bfloat16's accuracy parity is "
                           "not measured yet (--precision bfloat16 to use it)")
    return "float32", "CPU without bfloat16 units (AVX512_BF16, AMX): float32 is fastest"


def set_policy(precision: str) -> str:
    """Set Keras' global dtype policy for a resolved precision; returns its name."""
    import keras

    policy = POLICIES[precision]
    keras.config.set_dtype_policy(policy)
    return policy
