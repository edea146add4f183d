"""INT8 models for OpenVINO by post-training quantisation, checked before use and cached.

NNCF quantises the OpenVINO form of a run's model (``runtime.to_openvino``),
calibrated on tiles of the run's own training images (its ``split.json``;
never test images). Before the INT8 model is used it is checked on the run's
validation images: each class's pooled Dice, with the run's threshold, must
drop by at most ``INT8_TOLERANCE`` against the same model in float32 through
the same tiling. A model that fails, or a run whose validation images are gone,
falls back to float32, and the log says why.

The outcome is kept in the run folder (``int8/``): the quantised model and a
``check.json`` with the figures, keyed by the model file's hash, the
OpenVINO and NNCF versions and the conversion, so quantisation and its check happen once per
model and installation; a failed check is remembered too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_cbam.files import write_text

logger = logging.getLogger(__name__)

#: The largest drop of any class's validation Dice that INT8 may cost.
INT8_TOLERANCE = 0.003
#: Calibration: at most this many training images, cut into tiles ...
CALIBRATION_IMAGES = 8
#: ... and at most this many tiles of them.
CALIBRATION_TILES = 32
#: Validation images scored for the check, at most.
CHECK_IMAGES = 16
CACHE_FOLDER = "int8"


@dataclass
class Int8Outcome:
    """What ``int8_model`` decided for one model: the INT8 model, or why not."""

    model: object | None         # an openvino.Model, or None: use float32
    reason: str
    check: dict


def model_key(model_file: Path) -> str:
    """The cache key: the model file's hash, the OpenVINO and NNCF versions, and how the
    model reaches OpenVINO (``runtime.OPENVINO_CONVERSION``)."""
    import nncf
    import openvino

    from unet_cbam.runtime import OPENVINO_CONVERSION

    digest = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()[:16]
    return (f"{digest}-openvino{openvino.__version__.split('-')[0]}-nncf{nncf.__version__}"
            f"-{OPENVINO_CONVERSION}")


def int8_model(folder: Path, keras_model, scale: float, tile_size: int, overlap: float,
               batch_size: int, threshold: float, converted=None) -> Int8Outcome:
    """The INT8 OpenVINO model of the run (or fold) in ``folder``, checked, from its cache
    when there; ``keras_model`` is that run's model in float32, and ``converted``, where
    the caller has it already, its float32 OpenVINO form (else converted here). The
    tiling arguments are predict.py's, so the check scores what prediction will do."""
    from unet_cbam.run import RunFolder

    try:
        import nncf  # noqa: F401
        import openvino
    except ImportError as error:
        raise ValueError(f"precision int8 needs the openvino extra (pip install "
                         f"'unet_cbam[openvino]', which brings NNCF): {error}") from None
    run = RunFolder(folder)
    cache = run.path / CACHE_FOLDER / model_key(run.model_path)
    check_path, xml = cache / "check.json", cache / "model.xml"
    if check_path.is_file():
        check = json.loads(check_path.read_text())
        if not check["accepted"]:
            return Int8Outcome(None, check["reason"] + " (checked before)", check)
        if xml.is_file():
            return Int8Outcome(openvino.Core().read_model(str(xml)),
                               check["reason"] + " (checked before)", check)
    pairs = _pairs(run)
    if pairs is None:
        return Int8Outcome(None, f"{run.path}: its training and validation images are not "
                           "where it was trained (data moved?), so INT8 cannot be calibrated "
                           "and checked: float32", {})
    train, val = pairs
    from unet_cbam.runtime import to_openvino

    with tempfile.TemporaryDirectory(prefix="unet_cbam-int8-") as work:
        float32 = converted if converted is not None else to_openvino(keras_model, Path(work))
        tiles = calibration_tiles([image for image, _ in train], scale, tile_size,
                                  run.config.model.divisor)
        quantized = quantize(float32, tiles)
        check = check_int8(float32, quantized, val, scale, tile_size, overlap, batch_size,
                           run.config.model.divisor, threshold, run.class_names)
    check["calibration_tiles"] = len(tiles)
    check["key"] = cache.name
    try:  # the model first: a check.json that says accepted always has its model beside it
        cache.mkdir(parents=True, exist_ok=True)
        if check["accepted"]:
            openvino.save_model(quantized, str(xml), compress_to_fp16=False)
        write_text(check_path, json.dumps(check, indent=2))
    except OSError as error:  # a read-only run folder: used now, made again next time
        logger.warning("%s: the INT8 verdict is not kept (%s)", cache, error)
    return Int8Outcome(quantized if check["accepted"] else None, check["reason"], check)


def _pairs(run) -> tuple[list, list] | None:
    """((image, truth) of up to CALIBRATION_IMAGES training pairs, the same of up to
    CHECK_IMAGES validation pairs), preprocessed as predict.py does; None when missing."""
    from unet_cbam.data.io import BITDEPTH, preprocess, read_mask, read_raw
    from unet_cbam.data.verify import data_folders, find_pairs

    if not run.split_path.is_file():
        return None
    split = run.read_split()
    config = run.config
    folders = [data_folders(config.data)]
    if config.data.val_data:
        folders.append((Path(config.data.val_data) / "images",
                        Path(config.data.val_data) / "masks"))
    samples = {}
    for images, masks in folders:
        if images.is_dir() and masks.is_dir():
            samples.update({s.stem: s for s in find_pairs(images, masks)[0]})
    train = [samples[s] for s in split["train"] if s in samples][:CALIBRATION_IMAGES]
    val = [samples[s] for s in split["val"] if s in samples][:CHECK_IMAGES]
    if not train or not val:
        return None
    normalization = config.data.normalization or BITDEPTH

    def load(sample):
        image = preprocess(read_raw(sample.image_path), config.model.input_channels,
                           sample.image_path, normalization)
        return image, read_mask(sample.mask_path, run.codec)
    return [load(s) for s in train], [load(s) for s in val]


def calibration_tiles(images: list[np.ndarray], scale: float, tile_size: int, divisor: int
                      ) -> list[np.ndarray]:
    """Up to ``CALIBRATION_TILES`` tiles ``(1, T, T, C)`` of the (resampled) images, on a
    grid, spread over the images; ``T``: the tile size, or the smallest image's shorter
    side, rounded down to ``divisor``."""
    from unet_cbam.data.io import resize_image, scaled_size

    resampled = []
    for image in images:
        height, width = scaled_size(*image.shape[:2], scale)
        if (height, width) != image.shape[:2]:
            image = resize_image(image, height, width)
            image = image[..., None] if image.ndim == 2 else image
        resampled.append(image)
    side = min(tile_size, *(min(i.shape[:2]) for i in resampled))
    side = max(divisor, side // divisor * divisor)
    per_image = [[image[y:y + side, x:x + side]
                  for y in range(0, image.shape[0] - side + 1, side)
                  for x in range(0, image.shape[1] - side + 1, side)] for image in resampled]
    tiles = []
    while len(tiles) < CALIBRATION_TILES and any(per_image):  # round robin over images
        for grid in per_image:
            if grid and len(tiles) < CALIBRATION_TILES:
                tiles.append(np.ascontiguousarray(grid.pop(0)[None], np.float32))
    return tiles


def quantize(model, tiles: list[np.ndarray]):
    """NNCF's post-training INT8 quantisation of an OpenVINO ``model`` on ``tiles``."""
    import nncf

    return nncf.quantize(model, nncf.Dataset(tiles), subset_size=len(tiles))


def check_int8(float32, int8, pairs: list, scale: float, tile_size: int, overlap: float,
               batch_size: int, divisor: int, threshold: float, class_names: list[str]
               ) -> dict:
    """Each class's pooled validation Dice in float32 and INT8, and the verdict."""
    from unet_cbam.evaluate import confusion_matrix, scores
    from unet_cbam.inference import (
        openvino_predictor,
        probabilities_to_labels,
        resampled_predict,
    )

    labels = len(class_names)
    dice = {}
    for name, model in (("float32", float32), ("int8", int8)):
        predictor: Callable = openvino_predictor(model, "f32")
        pooled = np.zeros((labels, labels), np.int64)
        for image, truth in pairs:
            probabilities = resampled_predict(image, predictor, scale=scale,
                                              tile_size=tile_size, overlap=overlap,
                                              batch_size=batch_size, divisor=divisor)
            pooled += confusion_matrix(truth, probabilities_to_labels(probabilities, threshold),
                                       labels)
        dice[name] = [float(v) for v in scores(pooled)["dice"]]
    drops = {class_names[i]: round(dice["float32"][i] - dice["int8"][i], 6)
             for i in range(labels) if not np.isnan(dice["float32"][i])}
    worst = max(drops, key=drops.get)
    accepted = drops[worst] <= INT8_TOLERANCE
    reason = (f"INT8 checked on {len(pairs)} validation images: {worst}'s Dice "
              f"{dice['float32'][class_names.index(worst)]:.4f} in float32, "
              f"{dice['int8'][class_names.index(worst)]:.4f} in INT8 (the largest drop, "
              f"{drops[worst]:+.4f}; at most {INT8_TOLERANCE} allowed)")
    return {"accepted": accepted, "reason": reason + ("" if accepted else ": float32"),
            "validation_images": len(pairs), "tolerance": INT8_TOLERANCE,
            "dice_float32": dict(zip(class_names, dice["float32"], strict=True)),
            "dice_int8": dict(zip(class_names, dice["int8"], strict=True)),
            "dice_drop": drops}
