"""Sliding-window prediction for images of any size.

The image is covered by tiles placed evenly along each axis, the first at 0
and the last flush with the border, neighbours overlapping by at least
``overlap`` of a tile. Each tile's prediction is weighted by a Gaussian
importance map (centre 1, borders small; nnU-Net's sigma = tile / 8) and the
weighted sum is divided by the summed weights, so seams vanish and a
predictor that is consistent across tiles is reproduced exactly.

Tiles are fed to the predictor in batches, row of tiles after row of tiles;
``sliding_window_rows`` hands out each band of rows as soon as it is final,
so beyond the image itself memory is one tile-high band of accumulators and
one batch of tiles, whatever the image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]
"""``(B, h, w, C)`` float32 tiles -> ``(B, h, w, K)`` probabilities."""


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` pixels.

    Evenly spaced, first at 0, last at ``length - tile``, with a step of at
    most ``tile * (1 - overlap)``. ``length <= tile`` gives one tile at 0.
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    max_step = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / max_step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def gaussian_importance(height: int, width: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    """``(height, width)`` float32 weights, 1 at the centre, never below 1e-3."""
    axes = []
    for size in (height, width):
        position = np.arange(size, dtype=np.float64) - (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * (position / sigma) ** 2))
    weights = np.outer(axes[0], axes[1])
    weights /= weights.max()
    # Clamped like nnU-Net, so pixels seen only by tile borders still divide safely.
    return np.maximum(weights, 1e-3).astype(np.float32)


def round_up(value: int, divisor: int) -> int:
    """The smallest multiple of ``divisor`` that is >= ``value``."""
    return -(-value // divisor) * divisor


def tile_shape(height: int, width: int, tile_size: int, divisor: int) -> tuple[int, int]:
    """The tile actually used: ``tile_size`` rounded up to ``divisor``, but no
    larger than the image rounded up to ``divisor`` (small images are not padded
    to a full tile)."""
    tile = round_up(tile_size, divisor)
    return min(tile, round_up(height, divisor)), min(tile, round_up(width, divisor))


def sliding_window_rows(image: np.ndarray, predictor: Predictor, *, tile_size: int = 512,
                        overlap: float = 0.25, batch_size: int = 4, divisor: int = 1,
                        blending: str = "gaussian",
                        convert: Callable[[np.ndarray], np.ndarray] | None = None
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """Predict ``image`` tile by tile, yielding finished rows from top to bottom.

    The streaming form of ``sliding_window_predict`` (same arguments, same
    numbers, bit for bit): instead of whole-image accumulators it keeps one
    tile-high band, and yields ``(top, rows)`` with ``rows`` the final
    ``(n, W, K)`` float32 probabilities of image rows ``top .. top + n - 1``
    as soon as no later tile touches them. ``convert`` turns each tile of
    ``image`` (for example uint8 as decoded) into the predictor's float32
    input, so the whole image is never converted at once. Memory: the image
    as given, one band of ``tile x width x K`` and one batch of tiles.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    if blending not in ("gaussian", "constant"):
        raise ValueError(f"blending must be 'gaussian' or 'constant', got {blending!r}")
    from unet_cbam.data.io import pad_to  # here: importing this module stays light

    convert = convert or (lambda tile: np.asarray(tile, np.float32))
    height, width = image.shape[:2]
    tile_h, tile_w = tile_shape(height, width, tile_size, divisor)
    padded = pad_to(image, max(height, tile_h), max(width, tile_w))
    full_h, full_w = padded.shape[:2]
    weights = (gaussian_importance(tile_h, tile_w) if blending == "gaussian"
               else np.ones((tile_h, tile_w), np.float32))
    origins = [(y, x) for y in tile_starts(full_h, tile_h, overlap)
               for x in tile_starts(full_w, tile_w, overlap)]

    band = None                                   # rows band_top .. band_top + tile_h - 1
    band_weights = np.zeros((tile_h, full_w), np.float32)
    band_top = 0

    def finish(until: int) -> tuple[int, np.ndarray]:
        """Rows band_top .. until - 1 are final: divide, hand out, shift the band up."""
        nonlocal band_top
        count = until - band_top  # 1 .. tile_h
        rows = band[:count] / band_weights[:count, :, None]
        keep = tile_h - count
        band[:keep], band_weights[:keep] = band[count:], band_weights[count:]
        band[keep:], band_weights[keep:] = 0, 0
        top, band_top = band_top, until
        return top, rows[:max(0, min(count, height - top)), :width]

    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        tiles = np.stack([convert(padded[y:y + tile_h, x:x + tile_w]) for y, x in chunk])
        predictions = np.asarray(predictor(tiles), dtype=np.float32)
        if predictions.shape[:3] != tiles.shape[:3]:
            raise ValueError(f"predictor returned {predictions.shape} for tiles {tiles.shape}")
        if band is None:
            band = np.zeros((tile_h, full_w, predictions.shape[-1]), np.float32)
        for (y, x), prediction in zip(chunk, predictions, strict=True):
            if y > band_top:  # a new row of tiles: the rows above it are final
                top, rows = finish(y)
                if len(rows):
                    yield top, rows
            band[y - band_top:y - band_top + tile_h, x:x + tile_w] += \
                prediction * weights[..., None]
            band_weights[y - band_top:y - band_top + tile_h, x:x + tile_w] += weights
    while band_top < height:
        top, rows = finish(min(full_h, band_top + tile_h))
        yield top, rows


def sliding_window_predict(image: np.ndarray, predictor: Predictor, *, tile_size: int = 512,
                           overlap: float = 0.25, batch_size: int = 4, divisor: int = 1,
                           blending: str = "gaussian") -> np.ndarray:
    """Predict ``image`` tile by tile and stitch the result.

    Args:
        image: ``(H, W, C)`` float32, any size.
        predictor: maps ``(B, h, w, C)`` tiles to ``(B, h, w, K)``.
        tile_size: tile side in pixels; rounded up to a multiple of ``divisor``.
        overlap: fraction of a tile shared by neighbours, in [0, 1).
        batch_size: tiles per predictor call.
        divisor: tile sides must be multiples of this (the model's 2**depth).
        blending: ``"gaussian"`` (importance-weighted) or ``"constant"`` (mean).

    Returns:
        ``(H, W, K)`` float32: exactly the input's height and width. An image
        smaller than a tile is padded (reflection) up to the tile, and the
        padding is cropped off again. ``sliding_window_rows`` yields the same
        numbers row band by row band, without the whole-image output.
    """
    output = None
    for top, rows in sliding_window_rows(image, predictor, tile_size=tile_size,
                                         overlap=overlap, batch_size=batch_size,
                                         divisor=divisor, blending=blending):
        if output is None:
            output = np.empty(image.shape[:2] + rows.shape[2:], np.float32)
        output[top:top + len(rows)] = rows
    return output


def resampled_predict(image: np.ndarray, predictor: Predictor, *, scale: float = 1.0,
                      **tiling) -> np.ndarray:
    """``sliding_window_predict`` for a model trained on images resampled by ``scale``
    (the plan's training resolution): the image is resampled the same way (pixel-area
    averaging), predicted, and its probabilities resampled back (bilinear) to the
    image's own size. ``scale`` 1 is ``sliding_window_predict`` itself."""
    if scale == 1.0:
        return sliding_window_predict(image, predictor, **tiling)
    from unet_cbam.data.io import resize_image, scaled_size

    height, width = image.shape[:2]
    small = resize_image(image, *scaled_size(height, width, scale))
    probabilities = sliding_window_predict(small.reshape(small.shape[:2] + (-1,)), predictor,
                                           **tiling)
    return resize_image(probabilities, height, width).reshape(height, width, -1)


# --------------------------------------------------------------------------
# test-time augmentation and labels
# --------------------------------------------------------------------------

#: The 8 symmetries of a square: (number of 90-degree rotations, horizontal flip).
DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def tta_views(square: bool) -> list[tuple[int, bool]]:
    """(90-degree rotations, horizontal flip) of each TTA view: the 8 symmetries of a
    square tile, or the 4 flips that keep a non-square tile's shape."""
    return DIHEDRAL if square else [(0, False), (0, True), (2, False), (2, True)]


def in_view(predictor: Predictor, rotations: int, flip: bool) -> Predictor:
    """``predictor`` on tiles flipped (horizontally, first) and rotated by ``rotations``
    quarter turns, its probabilities turned back: the same result for a model that
    respects the symmetry."""
    def predict(tiles: np.ndarray) -> np.ndarray:
        view = np.flip(tiles, axis=2) if flip else tiles
        view = np.rot90(view, rotations, axes=(1, 2))
        prediction = np.asarray(predictor(np.ascontiguousarray(view)), np.float32)
        prediction = np.rot90(prediction, -rotations, axes=(1, 2))
        return np.flip(prediction, axis=2) if flip else prediction
    return predict


def with_tta(predictor: Predictor) -> Predictor:
    """Average ``predictor`` over flips and 90-degree rotations (``tta_views``), each
    inverted."""
    def predict(tiles: np.ndarray) -> np.ndarray:
        views = tta_views(tiles.shape[1] == tiles.shape[2])
        total = None
        for rotations, flip in views:
            prediction = in_view(predictor, rotations, flip)(tiles)
            total = prediction if total is None else total + prediction
        return total / len(views)
    return predict


def ensemble_predictor(predictors: list[Predictor]) -> Predictor:
    """The mean of several predictors' probabilities (cross-validation folds); one
    predictor is returned as it is."""
    if len(predictors) == 1:
        return predictors[0]

    def predict(tiles: np.ndarray) -> np.ndarray:
        total = None
        for predictor in predictors:
            prediction = np.asarray(predictor(tiles), np.float32)
            total = prediction if total is None else total + prediction
        return total / len(predictors)
    return predict


def onnx_predictor(path: str, threads: int | None = None) -> Predictor:
    """A ``Predictor`` running an ONNX model (``unet_cbam.export``) with onnxruntime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(tiles: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(tiles, np.float32)})[0]
    return predict


def openvino_predictor(model, precision: str = "f32", threads: int | None = None
                       ) -> Predictor:
    """A ``Predictor`` running an OpenVINO model (a ``Model``, or the path of an IR ``.xml``
    or ONNX file) on the CPU in ``precision`` (OpenVINO's ``f32`` or ``bf16``).

    The LATENCY hint: predict.py sends one batch of tiles at a time and waits for it,
    and THROUGHPUT would split the cores into streams that one request cannot fill.
    """
    import openvino

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def predict(tiles: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(tiles, np.float32)})
        return np.array(request.get_output_tensor(0).data)  # a copy: the request reuses it
    return predict


def keras_predictor(model) -> Predictor:
    """A ``Predictor`` running a Keras model on a batch of tiles.

    ``model.predict_on_batch`` traces a new graph for every tile shape (small
    images give many shapes); a ``tf.function`` with ``reduce_retracing``
    generalises to unknown sizes after a few, so a folder of odd-sized images
    costs a couple of traces instead of one per size.
    """
    import tensorflow as tf  # the graph function is TensorFlow's; nothing else here is

    call = tf.function(lambda tiles: model(tiles, training=False), reduce_retracing=True)

    def predict(tiles: np.ndarray) -> np.ndarray:
        return np.asarray(call(tf.convert_to_tensor(tiles, tf.float32)))
    return predict


def predictive_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``(H, W, K)`` probabilities -> ``(H, W)`` entropy in [0, 1] (divided by its maximum,
    log 2 for a sigmoid, log K for a softmax): 0 certain, 1 undecided."""
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    if p.shape[-1] == 1:
        q = np.clip(1.0 - p, 1e-12, 1.0)
        entropy = -(p * np.log(p) + q * np.log(q))[..., 0]
        return (entropy / np.log(2)).astype(np.float32)
    return (-(p * np.log(p)).sum(axis=-1) / np.log(p.shape[-1])).astype(np.float32)


def probabilities_to_labels(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(H, W, K)`` -> uint16 ``(H, W)``: threshold a sigmoid (K = 1), argmax otherwise."""
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] > threshold).astype(np.uint16)
    return np.argmax(probabilities, axis=-1).astype(np.uint16)
