import numpy as np
import pytest

from unet_cbam.inference import (
    gaussian_importance,
    probabilities_to_labels,
    sliding_window_predict,
    sliding_window_rows,
    tile_shape,
    tile_starts,
    with_tta,
)


def _identity_like(tiles):
    """Pixel-wise: each output depends on its own input pixel only, so any tiling
    must reproduce it exactly."""
    return np.concatenate([tiles[..., :1] * 2.0 + 1.0, np.sin(tiles[..., -1:])], axis=-1)


def _expected(image):
    return _identity_like(image[None])[0]


@pytest.mark.parametrize("size", [(20, 30), (64, 64), (64, 100), (131, 77), (1, 1), (257, 511)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_stitching_reproduces_a_pixelwise_predictor_exactly(size, overlap):
    image = np.random.default_rng(0).random(size + (3,)).astype(np.float32)
    calls = []

    def predictor(tiles):
        calls.append(tiles.shape)
        assert tiles.shape[1] % 16 == 0 and tiles.shape[2] % 16 == 0
        return _identity_like(tiles)

    output = sliding_window_predict(image, predictor, tile_size=64, overlap=overlap,
                                    batch_size=3, divisor=16)
    assert output.shape == size + (2,)
    np.testing.assert_allclose(output, _expected(image), rtol=1e-6, atol=1e-6)
    assert all(shape[0] <= 3 for shape in calls)


def test_tile_starts_are_even_and_flush():
    assert tile_starts(100, 100, 0.5) == [0]
    assert tile_starts(50, 100, 0.5) == [0]
    assert tile_starts(200, 100, 0.0) == [0, 100]
    assert tile_starts(201, 100, 0.0) == [0, 50, 101]
    assert tile_starts(300, 100, 0.5) == [0, 50, 100, 150, 200]
    starts = tile_starts(1000, 128, 0.25)
    assert starts[0] == 0 and starts[-1] == 1000 - 128
    steps = np.diff(starts)
    assert steps.max() <= 96 and steps.max() - steps.min() <= 1


def test_tile_shape_rounds_to_divisor_and_shrinks_for_small_images():
    assert tile_shape(1000, 1000, 500, 16) == (512, 512)
    assert tile_shape(100, 1000, 512, 16) == (112, 512)
    assert tile_shape(1, 1, 512, 32) == (32, 32)


def test_gaussian_weights():
    weights = gaussian_importance(64, 32)
    assert weights.shape == (64, 32) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0, abs=1e-3)
    assert weights.min() == pytest.approx(1e-3)
    np.testing.assert_allclose(weights, weights[::-1, ::-1])


def test_gaussian_blending_favours_tile_centres():
    """A predictor that returns each tile's own index: where two tiles overlap,
    the one whose centre is nearer must dominate."""
    image = np.zeros((64, 96, 1), np.float32)
    counter = iter(range(100))

    def predictor(tiles):
        return np.stack([np.full(t.shape[:2] + (1,), next(counter), np.float32) for t in tiles])

    output = sliding_window_predict(image, predictor, tile_size=64, overlap=0.5,
                                    batch_size=1, divisor=1)
    # tiles start at x = 0 and 32 (values 0 and 1); x = 35 is nearer tile 0's centre (31.5).
    assert output[32, 35, 0] < 0.5 < output[32, 60, 0]


def test_bad_arguments_name_the_value():
    image = np.zeros((8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="overlap must be in"):
        sliding_window_predict(image, _identity_like, overlap=1.0)
    with pytest.raises(ValueError, match=r"image must be \(H, W, C\)"):
        sliding_window_predict(image[..., 0], _identity_like)
    with pytest.raises(ValueError, match="blending must be"):
        sliding_window_predict(image, _identity_like, blending="median")


def test_tta_inverts_every_transform():
    tiles = np.random.default_rng(1).random((2, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(with_tta(_identity_like)(tiles), _identity_like(tiles),
                               rtol=1e-6)
    rectangular = tiles[:, :, :8]
    np.testing.assert_allclose(with_tta(_identity_like)(rectangular),
                               _identity_like(rectangular), rtol=1e-6)

    def position_dependent(batch):  # not equivariant: TTA must change it
        ramp = np.linspace(0, 1, batch.shape[2], dtype=np.float32)
        return np.broadcast_to(ramp[None, None, :, None], batch.shape).copy()
    averaged = with_tta(position_dependent)(tiles)
    np.testing.assert_allclose(averaged, 0.5, atol=1e-6)


def test_labels_from_probabilities():
    binary = np.array([[[0.2], [0.7]]], np.float32)
    np.testing.assert_array_equal(probabilities_to_labels(binary, 0.5), [[0, 1]])
    np.testing.assert_array_equal(probabilities_to_labels(binary, 0.8), [[0, 0]])
    multi = np.array([[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]], np.float32)
    np.testing.assert_array_equal(probabilities_to_labels(multi), [[1, 0]])


def _reference_stitch(image, predictor, tile_size, overlap, batch_size, divisor):
    """The whole-image accumulation the streaming version must equal bit for bit."""
    from unet_cbam.data.io import pad_to
    from unet_cbam.inference import gaussian_importance, tile_shape, tile_starts

    height, width = image.shape[:2]
    tile_h, tile_w = tile_shape(height, width, tile_size, divisor)
    padded = pad_to(image, max(height, tile_h), max(width, tile_w))
    weights = gaussian_importance(tile_h, tile_w)
    origins = [(y, x) for y in tile_starts(padded.shape[0], tile_h, overlap)
               for x in tile_starts(padded.shape[1], tile_w, overlap)]
    output = weight_sum = None
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        predictions = predictor(np.stack([padded[y:y + tile_h, x:x + tile_w]
                                          for y, x in chunk]))
        if output is None:
            output = np.zeros(padded.shape[:2] + predictions.shape[-1:], np.float32)
            weight_sum = np.zeros(padded.shape[:2], np.float32)
        for (y, x), prediction in zip(chunk, predictions, strict=True):
            output[y:y + tile_h, x:x + tile_w] += prediction * weights[..., None]
            weight_sum[y:y + tile_h, x:x + tile_w] += weights
    return (output / weight_sum[..., None])[:height, :width]


@pytest.mark.parametrize("shape, tile, overlap, batch", [
    ((300, 410, 1), 128, 0.25, 4), ((64, 700, 3), 64, 0.5, 3), ((37, 20, 1), 64, 0.25, 2),
    ((512, 512, 1), 512, 0.25, 4), ((257, 129, 2), 64, 0.0, 5),
])
def test_streamed_rows_equal_whole_image_stitching_bit_for_bit(shape, tile, overlap, batch):
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape, dtype=np.float32)
    kernel = rng.random((shape[2], 2), dtype=np.float32)

    def predictor(tiles):  # depends on the position inside the tile: seams would show
        ramp = np.linspace(0, 1, tiles.shape[2], dtype=np.float32)[None, None, :, None]
        return np.tanh(tiles @ kernel + ramp).astype(np.float32)

    expected = _reference_stitch(image, predictor, tile, overlap, batch, 16)
    stitched = sliding_window_predict(image, predictor, tile_size=tile, overlap=overlap,
                                      batch_size=batch, divisor=16)
    np.testing.assert_array_equal(stitched, expected)
    tops, covered = [], 0
    for top, rows in sliding_window_rows(image, predictor, tile_size=tile, overlap=overlap,
                                         batch_size=batch, divisor=16):
        assert top == covered and rows.shape[1:] == (shape[1], 2)
        np.testing.assert_array_equal(rows, expected[top:top + len(rows)])
        tops.append(top)
        covered = top + len(rows)
    assert covered == shape[0] and tops == sorted(tops)


def test_rows_convert_each_tile_from_the_stored_type():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (200, 150, 1), dtype=np.uint8)

    def predictor(tiles):
        return tiles * 2.0

    as_float = sliding_window_predict(raw.astype(np.float32) / 255, predictor, tile_size=64,
                                      divisor=16)
    streamed = np.concatenate([rows for _, rows in sliding_window_rows(
        raw, predictor, tile_size=64, divisor=16,
        convert=lambda tile: tile.astype(np.float32) / 255)])
    np.testing.assert_array_equal(streamed, as_float)
