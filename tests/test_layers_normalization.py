import numpy as np
import pytest
from keras_objects import run_layer_test

from unet_cbam.layers import PixelNormalization


def test_imagenet_statistics_exactly(tmp_path):
    kwargs = {"scale": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "reverse_channels": False}
    output = run_layer_test(PixelNormalization, kwargs, (2, 4, 6, 3), tmp_path, 0,
                            input_range=(0.0, 1.0))
    x = np.random.default_rng(0).uniform(0.0, 1.0, (2, 4, 6, 3)).astype("float32")
    expected = (x - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    np.testing.assert_allclose(output, expected, rtol=1e-6)


def test_caffe_reverses_rgb_to_bgr_before_subtracting_the_bgr_mean(tmp_path):
    mean_bgr = [103.939, 116.779, 123.68]
    kwargs = {"scale": 255.0, "mean": mean_bgr, "std": 1.0, "reverse_channels": True}
    output = run_layer_test(PixelNormalization, kwargs, (1, 3, 3, 3), tmp_path, 0,
                            input_range=(0.0, 1.0))
    x = np.random.default_rng(0).uniform(0.0, 1.0, (1, 3, 3, 3)).astype("float32")
    expected = x[..., ::-1] * np.float32(255.0) - np.float32(mean_bgr)
    np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-4)
    # a pure-red RGB pixel lands in the last (R) channel of BGR
    red = np.zeros((1, 1, 1, 3), "float32")
    red[..., 0] = 1.0
    out = np.asarray(PixelNormalization(**kwargs)(red))[0, 0, 0]
    np.testing.assert_allclose(out, [-103.939, -116.779, 255.0 - 123.68], rtol=1e-6)


def test_tf_range_maps_0_1_to_minus_1_1(tmp_path):
    kwargs = {"scale": 2.0, "mean": 1.0, "std": 1.0, "reverse_channels": False}
    run_layer_test(PixelNormalization, kwargs, (1, 2, 2, 1), tmp_path, 0, input_range=(0.0, 1.0))
    out = np.asarray(PixelNormalization(**kwargs)(np.array([[[[0.0]], [[1.0]]]], "float32")))
    np.testing.assert_array_equal(out.ravel(), [-1.0, 1.0])


def test_zero_std_is_refused():
    with pytest.raises(ValueError, match="std must not contain 0"):
        PixelNormalization(std=[1.0, 0.0, 1.0])
