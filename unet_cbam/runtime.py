"""What runs a model's forward passes: Keras, onnxruntime on an ONNX conversion, or
OpenVINO on an OpenVINO conversion of that ONNX model, and the rule ``--runtime auto``
chooses by."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import keras

logger = logging.getLogger(__name__)


def to_onnx(model: keras.Model, path: Path) -> str:
    """``model`` converted to ONNX at ``path`` (any height and width), for onnxruntime."""
    import tensorflow as tf

    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ValueError(f"runtime onnxruntime needs the export extra (pip install "
                         f"'unet_cbam[export]'): {error}") from None
    shape = (None, *model.inputs[0].shape[1:])  # a model's fixed input size stays fixed
    model.export(str(path), format="onnx", verbose=False,
                 input_signature=[tf.TensorSpec(shape, tf.float32)])
    return str(path)


def to_openvino(model: keras.Model, folder: Path):
    """``model`` as an OpenVINO ``Model`` (any height and width), converted from its ONNX
    form (``to_onnx``, written into ``folder``): OpenVINO's ONNX front end reads what
    tf2onnx writes, where its TensorFlow front end would need a SavedModel of Keras 3."""
    try:
        import openvino
    except ImportError as error:
        raise ValueError(f"runtime openvino needs the openvino extra (pip install "
                         f"'unet_cbam[openvino]'): {error}") from None
    return openvino.convert_model(to_onnx(model, Path(folder) / "model.onnx"))


#: OpenVINO's CPU inference precision for predict.py's ``--precision``.
OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}


#: onnxruntime's images/s over Keras' in float32 on a CPU, measured by benchmarks/runtime.py
#: (predict.py's tiling, default model, 512x512): 1.30 on this project's 2-core AMD EPYC
#: (AVX2), 1.25 on an AVX-512 EPYC. No GPU build of onnxruntime is installed by the extra.
ONNXRUNTIME_CPU_SPEEDUP = 1.30


def choose_runtime(requested: str, precision: str, gpus: int | None = None
                   ) -> tuple[str, str]:
    """(keras | onnxruntime | openvino, reason) for ``requested`` (those, or auto).

    auto's rule, from measurements (``ONNXRUNTIME_CPU_SPEEDUP``): onnxruntime for float32
    on a CPU when onnxruntime and tf2onnx are installed; keras otherwise (on a GPU, Keras
    runs there; onnxruntime runs float32 only).
    """
    if requested != "auto":
        return requested, "asked for"
    if precision != "float32":
        return "keras", f"onnxruntime runs float32 only; precision is {precision}"
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        return "keras", "a GPU is visible (the onnxruntime of the export extra is CPU-only)"
    missing = [name for name in ("onnxruntime", "tf2onnx")
               if importlib.util.find_spec(name) is None]
    if missing:
        return "keras", (f"{' and '.join(missing)} not installed (pip install "
                         "'unet_cbam[export]' for onnxruntime, measured "
                         f"{ONNXRUNTIME_CPU_SPEEDUP:.2f}x faster on CPUs)")
    return "onnxruntime", (f"float32 on a CPU: measured {ONNXRUNTIME_CPU_SPEEDUP:.2f}x Keras' "
                           "images/s (benchmarks/runtime.py)")

