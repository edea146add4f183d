import typing

import keras
import numpy as np
import pytest
from keras_objects import run_layer_test

from unet_cbam.config import DEFAULT_REDUCTION_RATIO, AttentionKind, ModelConfig
from unet_cbam.layers import (
    ATTENTION_LAYERS,
    CBAM,
    ChannelAttention,
    SpatialAttention,
    create_attention,
)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _conv2d_same(x, kernel, bias):
    """Reference 'same' correlation, x: (N, H, W, Cin), kernel: (k, k, Cin, 1)."""
    k = kernel.shape[0]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(x.shape[:3], dtype=np.float64)
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2], :]
            out += np.tensordot(window, kernel[dy, dx, :, 0], axes=([3], [0]))
    return out + (bias[0] if bias is not None else 0.0)


def _cbam_reference(layer: CBAM, x: np.ndarray) -> np.ndarray:
    """CBAM as written in the paper, computed with the layer's own weights."""
    hidden_w, hidden_b = (v.numpy() for v in layer.channel_attention.hidden_dense.weights)
    out_w, out_b = (v.numpy() for v in layer.channel_attention.output_dense.weights)

    def mlp(v):
        return np.maximum(v @ hidden_w + hidden_b, 0.0) @ out_w + out_b

    channel_gate = _sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    refined = x * channel_gate[:, None, None, :]
    descriptor = np.stack([refined.mean(axis=-1), refined.max(axis=-1)], axis=-1)
    conv_weights = [v.numpy() for v in layer.spatial_attention.conv.weights]
    spatial_gate = _sigmoid(_conv2d_same(descriptor, conv_weights[0], conv_weights[1]))
    return refined * spatial_gate[..., None]


@pytest.mark.parametrize("layer_cls", [ChannelAttention, SpatialAttention, CBAM])
def test_output_shape_and_dtype(layer_cls):
    x = np.random.default_rng(0).normal(size=(2, 12, 10, 24)).astype("float32")
    y = layer_cls()(x)
    assert tuple(y.shape) == x.shape
    assert y.dtype == "float32"


def test_channel_count_is_read_from_input():
    layer = ChannelAttention(reduction_ratio=4)
    layer(np.zeros((1, 4, 4, 40), "float32"))
    assert layer.hidden_dense.units == 10
    assert layer.output_dense.units == 40
    tiny = ChannelAttention(reduction_ratio=16)
    tiny(np.zeros((1, 4, 4, 8), "float32"))
    assert tiny.hidden_dense.units == 1  # max(1, 8 // 16)


def test_cbam_matches_numpy_reference():
    x = np.random.default_rng(1).normal(size=(3, 9, 11, 32)).astype("float32")
    layer = CBAM(reduction_ratio=4, spatial_kernel_size=5)
    layer.build(x.shape)
    # Non-zero biases, so the reference has to use them too.
    for weight in layer.weights:
        if "bias" in weight.path:
            weight.assign(np.random.default_rng(2).normal(size=weight.shape) * 0.3)
    expected = _cbam_reference(layer, x.astype(np.float64))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected,
                               rtol=1e-4, atol=1e-5)


def test_paper_gate_goes_below_half_but_blog_gate_cannot():
    x = np.random.default_rng(3).normal(size=(8, 16, 16, 64)).astype("float32")
    paper = ChannelAttention(reduction_ratio=4, variant="paper")
    blog = ChannelAttention(reduction_ratio=4, variant="blog")
    paper_gate = keras.ops.convert_to_numpy(paper.gate(x))
    blog_gate = keras.ops.convert_to_numpy(blog.gate(x))
    assert paper_gate.min() < 0.5
    assert blog_gate.min() >= 0.5
    assert paper_gate.shape == blog_gate.shape == (8, 1, 1, 64)


def test_blog_variant_spatial_conv_has_no_bias():
    layer = SpatialAttention(variant="blog")
    layer.build((None, 8, 8, 4))
    assert layer.conv.use_bias is False
    assert len(layer.conv.weights) == 1


@pytest.mark.parametrize("kwargs", [
    {"reduction_ratio": 0}, {"spatial_kernel_size": 4}, {"variant": "blg"},
])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("spatial_", "")):
        CBAM(**kwargs)


def test_mixed_precision_keeps_gate_range_and_does_not_overflow():
    keras.config.set_dtype_policy("mixed_float16")
    layer = CBAM(reduction_ratio=4)
    # Values near float16's maximum: a float16 sum over the map would overflow.
    x = np.full((1, 64, 64, 16), 6.0e4, dtype="float16")
    x[..., ::2] = -6.0e4
    y = keras.ops.convert_to_numpy(layer(x))
    assert y.dtype == np.float16
    assert np.isfinite(y).all()
    gate = keras.ops.convert_to_numpy(layer.channel_attention.gate(x))
    assert gate.dtype == np.float32
    assert np.isfinite(gate).all() and (gate >= 0).all() and (gate <= 1).all()
    assert layer.channel_attention.hidden_dense.compute_dtype == "float32"


@pytest.mark.parametrize("layer_class, kwargs, weights", [
    (ChannelAttention, {"reduction_ratio": 4, "variant": "paper"}, 4),
    (ChannelAttention, {"reduction_ratio": 2, "variant": "blog"}, 4),
    (SpatialAttention, {"kernel_size": 3, "variant": "paper"}, 2),
    (SpatialAttention, {"kernel_size": 7, "variant": "blog"}, 1),  # no bias
    (CBAM, {"reduction_ratio": 2, "spatial_kernel_size": 5, "variant": "paper"}, 6),
])
def test_registered_layer_contract(layer_class, kwargs, weights, tmp_path):
    output = run_layer_test(layer_class, kwargs, (2, 8, 10, 16), tmp_path, weights)
    assert np.isfinite(output).all()


def test_reduction_ratio_has_one_default():
    assert ChannelAttention().reduction_ratio == CBAM().reduction_ratio == \
        ModelConfig(num_classes=1).reduction_ratio == DEFAULT_REDUCTION_RATIO


def test_attention_factory_names_and_table():
    assert create_attention("none") is None
    assert create_attention("cbam", prefix="skip2").name == "skip2_cbam"
    assert create_attention("channel", prefix="skip0").name == "skip0_channel_attention"
    spatial = create_attention("spatial", spatial_kernel_size=3, variant="blog", prefix="skip1")
    assert (spatial.name, spatial.kernel_size, spatial.variant) == \
        ("skip1_spatial_attention", 3, "blog")
    cbam = create_attention("cbam", reduction_ratio=2, spatial_kernel_size=5)
    assert (cbam.reduction_ratio, cbam.spatial_kernel_size) == (2, 5)
    with pytest.raises(ValueError, match="attention 'cbma' is not one of none, channel"):
        create_attention("cbma")
    # The config's choices and the factory's table are the same set.
    assert set(typing.get_args(AttentionKind)) == {"none", *ATTENTION_LAYERS}


def test_models_saved_before_the_faster_cbam_load_and_give_the_same_outputs():
    """tests/data/cbam_skip_v1.keras was saved by the CBAM before the batched MLP."""
    from pathlib import Path

    import unet_cbam  # noqa: F401 (registers the layers)

    data = Path(__file__).parent / "data"
    model = keras.saving.load_model(data / "cbam_skip_v1.keras", safe_mode=True, compile=False)
    x = np.random.default_rng(0).random((2, 32, 40, 1)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               np.load(data / "cbam_skip_v1_output.npy"), rtol=0, atol=1e-6)
