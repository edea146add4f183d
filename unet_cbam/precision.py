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

TensorFlow's bfloat16 speed on a CPU comes from oneDNN, so its units count
only where oneDNN may use them: ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``)
below ``AVX512_CORE_BF16`` hides AVX512_BF16 (below ``AVX512_CORE_AMX``, AMX),
and ``TF_ENABLE_ONEDNN_OPTS=0`` hides both (without oneDNN a bfloat16 training step of
32 patches of 128x128 took 10.4-10.6 s against 1.0 s in float32, on the Zen 5 EPYC with
AVX512_BF16, 2026-12-07). Below ``AVX512_CORE`` oneDNN has no
bfloat16 convolution at all (TensorFlow 2.21 fails at the first one), so
``--precision bfloat16`` is refused there with the variable named.

The gates of CBAM and the head stay float32 under every policy.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
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
#: oneDNN's instruction-set caps (``ONEDNN_MAX_CPU_ISA``), lowest first; aliases share a
#: rank. ``ALL`` and ``DEFAULT`` (or no variable) leave oneDNN every unit the CPU has.
ONEDNN_ISAS = {name: rank for rank, names in enumerate((
    ("sse41",), ("avx",), ("avx2",), ("avx2_vnni",), ("avx2_vnni_2",), ("avx512_core",),
    ("avx512_core_vnni",), ("avx512_core_bf16",), ("avx10_1_512", "avx512_core_fp16"),
    ("avx10_1_512_amx", "avx512_core_amx"), ("avx10_1_512_amx_fp16", "avx512_core_amx_fp16"),
    ("avx10_2_512",), ("avx10_2_512_amx_2",))) for name in names}
#: The least cap under which oneDNN runs each bfloat16 unit (CPU flag) natively.
BF16_UNIT_ISA = {"avx512_bf16": "avx512_core_bf16", "amx_bf16": "avx512_core_amx"}
#: Below this cap oneDNN has no bfloat16 convolution at all (measured, TensorFlow 2.21 on
#: an AVX512_BF16 EPYC: SSE41 to AVX2_VNNI_2 fail at the first convolution, AVX512_CORE
#: runs); AVX2_VNNI_2 has one on CPUs with AVX-NE-CONVERT.
BF16_MIN_ISA = "avx512_core"
#: The CPU flags of bfloat16 units.
BF16_CPU_FLAGS = tuple(BF16_UNIT_ISA)


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


def onednn_cap(environ: Mapping[str, str] | None = None) -> str | None:
    """The instruction set oneDNN is capped at (lower case), ``"off"`` where
    ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off, None where it may use the whole CPU (no
    cap, ``ALL``, ``DEFAULT``, or a name oneDNN does not know, which it ignores)."""
    environ = os.environ if environ is None else environ
    if environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
        return "off"
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = environ.get(name, "").strip().lower()
        if cap:
            return cap if cap in ONEDNN_ISAS else None
    return None


def cap_variable(environ: Mapping[str, str] | None = None) -> str:
    """``NAME=value`` of the variable behind ``onednn_cap``, for messages."""
    environ = os.environ if environ is None else environ
    names = ("TF_ENABLE_ONEDNN_OPTS",) if onednn_cap(environ) == "off" else (
        "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
    return next((f"{name}={environ[name].strip()}" for name in names
                 if environ.get(name, "").strip()), "")


def bf16_units(flags: set[str], environ: Mapping[str, str] | None = None
               ) -> tuple[list[str], list[str]]:
    """(the CPU's bfloat16 units that oneDNN may use, those its cap hides)."""
    present = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    cap = onednn_cap(environ)
    if cap is None:
        return present, []
    usable = [flag for flag in present if cap != "off"
              and ONEDNN_ISAS[cap] >= ONEDNN_ISAS[BF16_UNIT_ISA[flag]]]
    return usable, [flag for flag in present if flag not in usable]


def bf16_convolutions(flags: set[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether TensorFlow can run a bfloat16 convolution on this CPU at all (natively or
    emulated): not where oneDNN is capped below ``BF16_MIN_ISA``."""
    cap = onednn_cap(environ)
    if cap is None or cap == "off":
        return True
    if cap == "avx2_vnni_2":
        return "avx_ne_convert" in flags
    return ONEDNN_ISAS[cap] >= ONEDNN_ISAS[BF16_MIN_ISA]


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the visible GPUs (TensorFlow's device details)."""
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        found.append(tuple(capability) if capability else (0, 0))
    return found


def choose_precision(requested: str, gpus: list[tuple[int, int]] | None = None,
                     flags: set[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(float32 | bfloat16 | float16, reason) for ``requested`` on this hardware (and
    oneDNN's cap in ``environ``, the process environment by default)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    gpus = gpu_capabilities() if gpus is None else gpus
    flags = cpu_flags() if flags is None else flags
    units, hidden = bf16_units(flags, environ)
    if requested == "bfloat16" and not gpus and not bf16_convolutions(flags, environ):
        raise ValueError(
            f"precision bfloat16: {cap_variable(environ)} leaves oneDNN no bfloat16 "
            "convolution on this CPU (it needs AVX512_CORE or above); unset it, raise it, "
            "or use --precision float32")
    if requested != "auto":
        supported = {"float32": True,
                     "bfloat16": (bool(gpus) and min(gpus) >= (8, 0)) or
                     (not gpus and bool(units)),
                     "float16": bool(gpus) and min(gpus) >= (7, 0)}
        if not supported[requested]:
            logger.warning("precision %s: this %s has no %s units%s; it runs emulated, "
                           "slower than float32", requested, "GPU" if gpus else "CPU",
                           requested, f" oneDNN may use ({cap_variable(environ)})"
                           if hidden and not gpus and requested == "bfloat16" else "")
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
    if hidden and not units:
        return "float32", (f"CPU with {', '.join(hidden)}, but {cap_variable(environ)} keeps "
                           "oneDNN from them: float32 is fastest")
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
