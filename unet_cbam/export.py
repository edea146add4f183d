"""Export a trained run for deployment: SavedModel, ONNX, TFLite or OpenVINO, with its
preprocessing.

Built on Keras' own ``Model.export`` (SavedModel through TensorFlow, ONNX
through tf2onnx, TFLite through TensorFlow Lite's converter); OpenVINO's IR
(``model.xml`` and ``model.bin``, float32 weights) is converted by OpenVINO's
TensorFlow front end from the SavedModel (``runtime.to_openvino``). Every export
gets a ``preprocessing.json`` beside it: what predict.py does around the
model (channels, normalisation, divisor, output activation, class names,
mask encoding, threshold, post-processing, tiling), so the model can be used
with nothing but its runtime (see the README's onnxruntime example). Export
finishes only if the exported model matches Keras to ``PARITY`` on random
inputs and on a real image of the run's data when it is still there;
otherwise the export is removed and the error says by how much it differs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from unet_cbam.files import write_text

logger = logging.getLogger(__name__)

#: format: (Keras' name for it, default output below RUN/export/)
FORMATS = {"savedmodel": ("tf_saved_model", "savedmodel"), "onnx": ("onnx", "onnx/model.onnx"),
           "tflite": ("litert", "tflite/model.tflite"),
           "openvino": ("tf_saved_model", "openvino/model.xml")}
#: Largest absolute difference from Keras allowed (float32).
PARITY = 1e-4
PREPROCESSING_FILE = "preprocessing.json"


def preprocessing_spec(run, format: str, input_size: list[int] | None = None) -> dict[str, Any]:
    """What predict.py does around the model, as plain data (``preprocessing.json``)."""
    from unet_cbam.config import InferenceConfig, to_dict

    config, codec = run.config, run.codec
    normalization = run.normalization.to_config()
    inference = InferenceConfig()
    return {
        "format": format,
        "input": {
            "layout": "NHWC", "dtype": "float32", "channels": run.channels,
            "size": input_size, "divisor": config.model.divisor,
            "note": "height and width must be multiples of divisor (pad, then crop the "
                    "output); size, when set, is the only size the model takes",
        },
        "scale": {
            "value": float(config.data.scale or 1.0),
            "rule": "the model was trained on images resampled by this factor: resize the "
                    "normalised image to round(height * scale) x round(width * scale) (OpenCV "
                    "INTER_AREA), predict, resize the probabilities back (INTER_LINEAR)",
        },
        "channels": "gray to RGB: repeat; RGB to gray: 0.299 R + 0.587 G + 0.114 B "
                    "(OpenCV); alpha: dropped",
        "normalization": {
            **normalization,
            "bitdepth": "uint8 / 255, uint16 / 65535, float as it is (must lie in [0, 1])",
            "percentile": "per channel: (clip(x, low, high) - low) / (high - low)",
            "zscore": "percentile's result, then (x - mean) / std",
        },
        "output": {
            "activation": "sigmoid" if config.model.num_classes == 1 else "softmax",
            "classes": run.class_names,
        },
        "labels": {
            "threshold": inference.resolve_threshold(config.inference),
            "rule": "sigmoid: foreground where probability > threshold; softmax: argmax",
            "postprocessing": config.inference.classes if config.inference else None,
        },
        "mask_encoding": {
            "encoding": codec.encoding, "values": list(codec.values),
            "palette": [list(c) for c in codec.palette] if codec.palette else None,
            "colors": [list(c) for c in codec.colors] if codec.colors else None,
        },
        "tiling": {"tile_size": inference.tile_size, "overlap": inference.overlap,
                   "blending": "Gaussian importance map (sigma = tile / 8), as nnU-Net"},
        "model": to_dict(config.model),
    }


def export_run(run_dir: str | Path, format: str, output: str | Path | None = None,
               input_size: list[int] | None = None) -> Path:
    """Export the run's model; returns the exported file or folder.

    ``output`` defaults to ``RUN/export/savedmodel`` (a folder),
    ``RUN/export/onnx/model.onnx``, ``RUN/export/tflite/model.tflite`` or
    ``RUN/export/openvino/model.xml`` (with ``model.bin`` beside it);
    ``preprocessing.json`` goes inside the SavedModel folder, beside the
    others. An existing output or preprocessing.json is an error (nothing is
    overwritten). ``input_size`` fixes ``[height, width]`` (TFLite targets
    often need it).
    """
    import tensorflow as tf

    from unet_cbam.loading import in_precision, load_run

    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    run = load_run(run_dir)
    if len(run.members) > 1:
        raise ValueError(f"{run.path}: a cross-validation run holds {len(run.members)} models; "
                         "export one fold's folder (fold_K)")
    keras_format, default_name = FORMATS[format]
    output = Path(output) if output is not None else run.path / "export" / default_name
    spec_path = (output if format == "savedmodel" else output.parent) / PREPROCESSING_FILE
    for path in (output, spec_path, output.with_suffix(".bin") if format == "openvino" else None):
        if path is not None and path.exists():
            raise FileExistsError(f"{path}: exists; choose another --output or remove it")
    divisor = run.config.model.divisor
    if input_size is not None:
        if len(input_size) != 2 or any(side % divisor or side <= 0 for side in input_size):
            raise ValueError(f"input_size {input_size} must be [height, width], each a positive "
                             f"multiple of {divisor}")
    output.parent.mkdir(parents=True, exist_ok=True)
    shape = (None, *(input_size or (None, None)), run.channels)
    signature = [tf.TensorSpec(shape, tf.float32, name="image")]
    logger.info("exporting %s to %s", run.path, output)
    # Exports compute in float32, whatever precision the run trained in (auto is mixed
    # bfloat16 on CPUs with bfloat16 units): runtimes and edge devices expect float32.
    model = in_precision(run.model, run.config.model, "float32")
    try:
        if format == "openvino":
            _export_openvino(model, output, signature)
        else:
            model.export(str(output), format=keras_format, verbose=False,
                         input_signature=signature)
        difference = check_parity(run, output, format, input_size, model=model)
    except BaseException:
        _remove(output, format)
        raise
    if difference > PARITY:
        _remove(output, format)
        raise ValueError(f"{output}: the exported model differs from Keras by up to "
                         f"{difference:.3g} (limit {PARITY}); export refused")
    spec = preprocessing_spec(run, format, input_size)
    spec["parity_max_abs_difference"] = difference
    write_text(spec_path, json.dumps(spec, indent=2))
    logger.info("parity with Keras: max |difference| %.2g", difference)
    return output


def _export_openvino(model, output: Path, signature) -> None:
    """OpenVINO IR at ``output`` (``.xml``, and ``.bin`` beside it), converted as
    ``--runtime openvino`` converts (``runtime.to_openvino``: from the SavedModel), with
    float32 weights (OpenVINO would store float16 by default)."""
    import tempfile

    from unet_cbam.runtime import to_openvino

    with tempfile.TemporaryDirectory(prefix="unet_cbam-openvino-") as folder:
        converted = to_openvino(model, Path(folder), tuple(signature[0].shape))
        import openvino  # to_openvino said what to install where it is missing

        openvino.save_model(converted, str(output), compress_to_fp16=False)


def _remove(path: Path, format: str | None = None) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        if format == "openvino":
            path.with_suffix(".bin").unlink(missing_ok=True)


def parity_inputs(run, input_size: list[int] | None) -> list[np.ndarray]:
    """Random images, and a real one of the run's data when it is still there."""
    divisor = run.config.model.divisor
    height, width = input_size or (max(64, 2 * divisor), max(96, 3 * divisor))
    rng = np.random.default_rng(0)
    inputs = [rng.random((2, height, width, run.channels), dtype=np.float32)]
    real = _real_image(run)
    if real is not None:
        crop = np.zeros((1, height, width, run.channels), np.float32)
        window = real[:height, :width]
        crop[0, :window.shape[0], :window.shape[1]] = window
        inputs.append(crop)
    return inputs


def _real_image(run) -> np.ndarray | None:
    from unet_cbam.data.io import is_image_file, read_raw
    from unet_cbam.data.verify import data_folders

    try:
        images, _ = data_folders(run.config.data)
        first = next((p for p in sorted(images.iterdir()) if is_image_file(p)), None)
        return run.preprocess(read_raw(first), first) if first else None
    except Exception:  # the data moved or never existed (a hand-made run): random only
        return None


def tflite_interpreter(path: Path):
    """A LiteRT interpreter for the ``.tflite`` file: ``ai_edge_litert``'s (the export
    extra), which replaces TensorFlow's deprecated ``tf.lite.Interpreter``; TensorFlow's
    where LiteRT is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        logger.warning("ai_edge_litert is not installed (pip install 'unet_cbam[export]'); "
                       "checking the TFLite model with TensorFlow's deprecated interpreter")
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(path))


def run_exported(path: Path, format: str, images: np.ndarray) -> np.ndarray:
    """Run an exported model on ``images`` with its own runtime."""
    if format == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU",
                                                 {"INFERENCE_PRECISION_HINT": "f32"})
        return np.asarray(compiled(images)[0])
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    import tensorflow as tf

    if format == "savedmodel":
        loaded = tf.saved_model.load(str(path))  # held: its variables live as long as it
        return np.asarray(loaded.serve(images))
    interpreter = tflite_interpreter(path)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def check_parity(run, path: Path, format: str, input_size: list[int] | None = None,
                 model=None) -> float:
    """Largest absolute difference between the export and Keras (``model``, by default the
    run's) on the parity inputs."""
    model = run.model if model is None else model
    worst = 0.0
    for images in parity_inputs(run, input_size):
        expected = model.predict(images, verbose=0)
        worst = max(worst, float(np.abs(run_exported(path, format, images) - expected).max()))
    return worst


if __name__ == "__main__":  # the command lives in the CLI: say so, never exit 0 silently
    import sys

    print("python -m unet_cbam.export is not a command; use: unet-cbam export RUN_DIR "
          "--format onnx (or python -m unet_cbam export ...)", file=sys.stderr)
    sys.exit(2)
