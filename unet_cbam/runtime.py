"""What runs a model's forward passes: Keras, onnxruntime on an ONNX conversion, or
OpenVINO on an OpenVINO conversion of that ONNX model; and how ``--runtime auto``
chooses: on first use on a machine it times every runtime installed that runs the
precision, on a batch of tiles of predict.py's size, interleaved, and takes the
fastest that agrees with Keras; where the precision is left to auto, the run's INT8
model on OpenVINO is a candidate too once it has passed its validation check
(``unet_cbam.quantize``). The choice is cached, keyed by the CPU model, the
runtimes' versions, the model's hash, the tile shape, the precision and the
candidates."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np

from unet_cbam.files import write_text
from unet_cbam.precision import cpu_model

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


#: How ``to_openvino`` converts, in the INT8 cache's key: a model quantised from another
#: conversion (tf2onnx's ONNX, before 2026-12-07) is quantised anew.
OPENVINO_CONVERSION = "savedmodel"


def to_openvino(model: keras.Model, folder: Path, shape: tuple | None = None):
    """``model`` as an OpenVINO ``Model`` (any height and width, or ``shape``: ``(None, H,
    W, C)``), converted by OpenVINO's TensorFlow front end from its SavedModel (written
    into ``folder``).

    Not through ONNX: tf2onnx writes an NHWC graph with a transpose around every layer,
    which OpenVINO runs as Transpose, Pad, Reorder and reference-kernel Concat nodes. On
    a 2-core AVX512_BF16 EPYC they were 39 % of a bfloat16 pass (PERF_COUNT), against 13 %
    from the SavedModel, which ran 1.33x as fast (``benchmarks.runtime --profile``,
    docs/guide/performance.md#runtimes).
    """
    import tensorflow as tf

    try:
        import openvino
    except ImportError as error:
        raise ValueError(f"runtime openvino needs the openvino extra (pip install "
                         f"'unet_cbam[openvino]'): {error}") from None
    shape = shape or (None, *model.inputs[0].shape[1:])  # a fixed input size stays fixed
    saved = Path(folder) / "savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False,
                 input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    return openvino.convert_model(str(saved))


#: OpenVINO's CPU inference precision for predict.py's ``--precision``.
OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}


#: A candidate of --runtime auto must agree with Keras float32 on the timing tiles to within
#: this (largest absolute probability difference), or be no further from it than Keras itself
#: is in the same precision: two bfloat16 runtimes round differently, so each is held to
#: float32, not to the other (OpenVINO bfloat16 was 0.025 from Keras bfloat16 yet closer to
#: float32 than Keras bfloat16 on an AVX512_BF16 EPYC, 2026-12-07).
AGREEMENT = {"float32": 1e-4, "bfloat16": 0.02, "float16": 0.02}
#: The version of the rule --runtime auto chooses by, in its cache key: a choice made by an
#: older rule is timed again (2: agreement with Keras float32, not Keras in the precision).
CHOICE_RULE = 2
#: --runtime auto: timed rounds over the candidates, interleaved; the best of them counts.
TIMED_ROUNDS = 3
#: What onnxruntime and OpenVINO need: onnxruntime the conversion to ONNX as well; OpenVINO
#: converts the SavedModel itself (``to_openvino``).
NEEDS = {"onnxruntime": ("onnxruntime", "tf2onnx"), "openvino": ("openvino",)}


def choose_runtime(requested: str, precision: str, gpus: int | None = None
                   ) -> tuple[str, str]:
    """(keras | onnxruntime | openvino | auto, reason) for ``requested``: auto stays auto
    (``runtime_candidates`` and ``time_runtimes`` decide) except where only Keras can run
    (a GPU is visible: the other runtimes installed here are CPU-only)."""
    if requested != "auto":
        return requested, "asked for"
    if _gpus(gpus):
        return "keras", "a GPU is visible (the onnxruntime and OpenVINO installed are CPU-only)"
    return "auto", "timed on this machine"


def runtime_candidates(precision: str, gpus: int | None = None) -> tuple[list[str], list[str]]:
    """(the runtimes ``--runtime auto`` times for ``precision``, why the others are left out):
    Keras always; onnxruntime for float32; OpenVINO for float32 and bfloat16; each only when
    installed, and none but Keras where a GPU is visible."""
    if _gpus(gpus):
        return ["keras"], ["a GPU is visible: the other runtimes installed are CPU-only"]
    candidates, left_out = ["keras"], []
    for runtime, precisions in (("onnxruntime", ("float32",)),
                                ("openvino", tuple(OPENVINO_PRECISIONS))):
        missing = [name for name in NEEDS[runtime] if importlib.util.find_spec(name) is None]
        if precision not in precisions:
            left_out.append(f"{runtime} runs no {precision}")
        elif missing:
            left_out.append(f"{runtime}: {' and '.join(missing)} not installed")
        else:
            candidates.append(runtime)
    return candidates, left_out


def _gpus(gpus: int | None) -> int:
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    return gpus


#: The name ``--runtime auto`` gives an INT8 candidate (OpenVINO running NNCF's model).
INT8_CANDIDATE = "openvino-int8"


def int8_candidate(requested_precision: str, candidates: list[str]) -> tuple[bool, str]:
    """(whether ``--runtime auto`` also times INT8, why not): only where the precision was
    left to auto (``--precision float32`` or ``bfloat16`` is a user's choice to keep) and
    OpenVINO and NNCF are installed; whether the run's INT8 model passed its validation
    check is ``unet_cbam.quantize``'s to say."""
    if requested_precision != "auto":
        return False, f"int8: --precision {requested_precision} asked for"
    if "openvino" not in candidates:
        return False, "int8: openvino not a candidate"
    if importlib.util.find_spec("nncf") is None:
        return False, "int8: nncf not installed"
    return True, ""


def interleaved_best(predictors: dict, tiles: np.ndarray, rounds: int
                     ) -> tuple[dict, dict[str, float]]:
    """({name: its output for ``tiles``}, {name: its best seconds}): a warm-up call of each
    predictor (whose output is kept), then ``rounds`` rounds calling each once in turn, so a
    machine whose speed drifts slows every one alike."""
    outputs = {name: predict(tiles) for name, predict in predictors.items()}
    best = dict.fromkeys(predictors, float("inf"))
    for _ in range(rounds):
        for name, predict in predictors.items():
            started = time.perf_counter()
            predict(tiles)
            best[name] = min(best[name], time.perf_counter() - started)
    return outputs, best


def time_runtimes(predictors: dict, tiles: np.ndarray, precision: str,
                  rounds: int = TIMED_ROUNDS, checked: frozenset = frozenset(),
                  reference: np.ndarray | None = None) -> dict[str, dict]:
    """Each predictor's best seconds for ``tiles`` over ``rounds`` interleaved rounds (after
    a warm-up call each), and its agreement with Keras float32: ``reference``, its output
    for ``tiles`` (None: ``predictors["keras"]`` runs float32 and is the reference). A
    candidate agrees within ``AGREEMENT[precision]`` of it, or no further from it than
    ``predictors["keras"]`` (Keras in ``precision``, the user's choice) is. The
    predictors named in ``checked`` (INT8) agree by their own check, on validation Dice,
    since their probabilities differ from float32 by design; their largest difference is
    recorded."""
    outputs, best = interleaved_best(predictors, tiles, rounds)
    reference = outputs["keras"] if reference is None else reference
    differences = {name: float(np.abs(output - reference).max())
                   for name, output in outputs.items()}
    tolerance = max(AGREEMENT[precision], differences["keras"])
    results = {}
    for name in predictors:
        results[name] = {"seconds": round(best[name], 4), "max_difference": differences[name],
                         "agrees": name == "keras" or name in checked
                         or differences[name] <= tolerance}
        if name in checked:
            results[name]["checked_on_validation"] = True
    return results


def fastest(results: dict[str, dict]) -> tuple[str, str]:
    """(the fastest runtime that agrees with Keras float32, reason) from ``time_runtimes``."""
    agreeing = [name for name, result in results.items() if result["agrees"]]
    winner = min(agreeing, key=lambda name: results[name]["seconds"])
    timings = ", ".join(f"{name} {results[name]['seconds']:.3g} s"
                        + (" (its validation check passed)"
                           if results[name].get("checked_on_validation") else
                           "" if results[name]["agrees"] else " (disagrees with keras "
                           f"float32: {results[name]['max_difference']:.2g})")
                        for name in results)
    return winner, f"fastest of {timings} for a batch of tiles"


def cache_file() -> Path:
    """Where --runtime auto keeps its choices: $XDG_CACHE_HOME (or ~/.cache)/unet_cbam."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "unet_cbam" / "runtimes.json"


def cache_key(model_files: list[Path], shape: tuple[int, ...], precision: str,
              candidates: list[str]) -> str:
    """The CPU model, the runtimes' versions, the models' hash, the tiles' shape, the
    precision and the rule that chose (``CHOICE_RULE``): a choice holds only where all of
    them are the same."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    for path in model_files:
        digest.update(Path(path).read_bytes())
    versions = []
    for package in ("tensorflow", "onnxruntime", "openvino"):
        try:
            versions.append(f"{package}{version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package}-")
    return "|".join([cpu_model(), *versions, digest.hexdigest()[:16],
                     "x".join(map(str, shape)), precision, "+".join(candidates),
                     f"rule{CHOICE_RULE}"])


def read_choice(key: str) -> dict | None:
    """The cached choice for ``key``, or None (no cache, or an unreadable one)."""
    try:
        return json.loads(cache_file().read_text()).get(key)
    except (OSError, ValueError):
        return None


def write_choice(key: str, choice: dict) -> None:
    """Keep ``choice`` under ``key`` (other keys kept); a cache that cannot be written is
    only logged: the choice is made again next time."""
    path = cache_file()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    cache[key] = choice
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(cache, indent=2))
    except OSError as error:
        logger.warning("runtime choice not cached (%s): %s", path, error)
