import keras
import numpy as np
import pytest

from unet_cbam import ModelConfig, build_unet
from unet_cbam.layers import CBAM


def _images(size=64, channels=3, n=2, seed=0):
    return np.random.default_rng(seed).random((n, size, size, channels)).astype("float32")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@pytest.mark.parametrize("attention", ["none", "channel", "spatial", "cbam"])
@pytest.mark.parametrize("num_classes", [1, 4])
def test_every_attention_mode_and_head_runs(attention, num_classes):
    config = ModelConfig(attention=attention, num_classes=num_classes, depth=3, base_filters=8)
    model = build_unet(config)
    y = model.predict(_images(), verbose=0)
    assert y.shape == (2, 64, 64, num_classes)
    assert y.dtype == np.float32
    if num_classes == 1:
        assert ((y > 0) & (y < 1)).all()
    else:
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)
    names = [layer.name for layer in model.layers]
    suffix = {"none": None, "channel": "channel_attention", "spatial": "spatial_attention",
              "cbam": "cbam"}[attention]
    attention_names = [n for n in names if n.startswith("skip")]
    # each with its identity path; the full-resolution skip 0 has none by default
    assert attention_names == ([] if suffix is None else
                               [f"skip{level}_{name}" for level in (2, 1)
                                for name in (suffix, "identity")])


def test_layer_names_are_stable():
    names = {layer.name for layer in build_unet(ModelConfig(num_classes=1, depth=2,
                                                            attention_levels="all")).layers}
    for expected in ["image", "encoder_stage0_conv1", "encoder_stage1_pool", "bottleneck_conv2",
                     "decoder_stage0_upsample", "skip1_cbam", "decoder_stage0_concat",
                     "decoder_stage1_conv1", "skip0_cbam", "head_conv", "head"]:
        assert expected in names


def test_attention_sits_on_the_skip_before_concatenation():
    paper = build_unet(ModelConfig(num_classes=1, depth=2, attention_identity=False))
    cbam = paper.get_layer("skip1_cbam")
    concat = paper.get_layer("decoder_stage0_concat")
    assert cbam.input is paper.get_layer("encoder_stage1_relu2").output
    assert any(t is cbam.output for t in concat.input)
    model = build_unet(ModelConfig(num_classes=1, depth=2))  # the default: skip + cbam(skip)
    skip = model.get_layer("encoder_stage1_relu2").output
    cbam, identity = model.get_layer("skip1_cbam"), model.get_layer("skip1_identity")
    assert cbam.input is skip
    assert identity.input[0] is skip and identity.input[1] is cbam.output
    assert any(t is identity.output for t in model.get_layer("decoder_stage0_concat").input)


def test_same_config_builds_same_architecture():
    config = ModelConfig(num_classes=1, attention="spatial", upsampling="bilinear", dropout=0.2)
    a, b = build_unet(config), build_unet(config)
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert a.count_params() == b.count_params()


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet18", "mobilenetv2", "efficientnetb0"])
def test_backbone_encoders_get_attention_on_their_skips(encoder):
    config = ModelConfig(encoder=encoder, num_classes=2, attention="cbam")
    model = build_unet(config)
    y = model(_images(size=64), training=False)  # eager: predict's tracing of these large
    assert y.shape == (2, 64, 64, 2)            # graphs took most of the test's 45 s
    assert [layer.name for layer in model.layers if isinstance(layer, CBAM)] == \
        ["skip4_cbam", "skip3_cbam", "skip2_cbam", "skip1_cbam"]


def test_backbone_depth_truncates_the_encoder():
    full = build_unet(ModelConfig(num_classes=1, encoder="resnet18"))
    shallow = build_unet(ModelConfig(num_classes=1, encoder="resnet18", depth=3))
    assert shallow.count_params() < full.count_params()
    assert shallow.predict(_images(size=8, n=1), verbose=0).shape == (1, 8, 8, 1)


def test_backbone_local_weights_file_is_loaded(tmp_path):
    source = build_unet(ModelConfig(num_classes=1, encoder="resnet18", input_channels=3))
    weights = tmp_path / "resnet18.weights.h5"
    source.get_layer("encoder").save_weights(weights)

    config = ModelConfig(num_classes=1, encoder="resnet18", encoder_weights=str(weights))
    loaded = build_unet(config).get_layer("encoder")
    fresh = build_unet(ModelConfig(num_classes=1, encoder="resnet18")).get_layer("encoder")
    for expected, got in zip(source.get_layer("encoder").get_weights(), loaded.get_weights(),
                             strict=True):
        np.testing.assert_array_equal(got, expected)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(loaded.get_weights(), fresh.get_weights(), strict=True))


def test_backbone_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_unet(ModelConfig(num_classes=1, encoder="resnet18", encoder_weights=str(missing)))


def test_encoder_freeze():
    model = build_unet(ModelConfig(num_classes=1, encoder="resnet18", encoder_freeze=True))
    assert model.get_layer("encoder").trainable is False
    assert model.get_layer("skip1_cbam").trainable is True


def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown encoder 'resnet19'.*resnet18"):
        build_unet(ModelConfig(num_classes=1, encoder="resnet19"))


def test_non_divisible_input_size_names_size_and_divisor():
    with pytest.raises(ValueError, match=r"\[100, 96\] is not divisible by 16"):
        ModelConfig(num_classes=1, input_size=[100, 96])
    with pytest.raises(ValueError, match="not divisible by 32"):
        ModelConfig(num_classes=1, encoder="resnet18", input_size=[48, 48])


def test_fixed_input_size_and_channels():
    model = build_unet(ModelConfig(num_classes=1, input_size=[32, 48], input_channels=5, depth=3))
    assert model.input_shape == (None, 32, 48, 5)
    assert model.output_shape == (None, 32, 48, 1)


@pytest.mark.parametrize("config", [
    ModelConfig(num_classes=1, depth=3, base_filters=8, attention="cbam", cbam_variant="blog"),
    ModelConfig(encoder="resnet18", num_classes=3, upsampling="bilinear"),
])
@pytest.mark.slow
def test_keras_file_loads_in_safe_mode_with_identical_predictions(tmp_path, config):
    model = build_unet(config)
    x = _images()
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


@pytest.mark.parametrize("encoder", ["unet", "resnet18", "efficientnetb0", "mobilenetv2"])
def test_no_lambda_layers(encoder):
    model = build_unet(ModelConfig(num_classes=1, encoder=encoder))
    assert not [layer.name for layer in _all_layers(model)
                if isinstance(layer, keras.layers.Lambda)]


def test_mixed_precision_head_is_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model = build_unet(ModelConfig(num_classes=1, depth=2, base_filters=8))
    assert model.get_layer("decoder_stage0_conv1").compute_dtype == "float16"
    y = model.predict(_images(size=16), verbose=0)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()


REQUIRED_BACKBONES = ["resnet18", "resnet34", "resnet50", "efficientnetb0", "efficientnetb1",
                      "efficientnetb2", "efficientnetb3", "mobilenetv2", "vgg16"]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", REQUIRED_BACKBONES)
def test_required_backbones_build_and_run(encoder):
    model = build_unet(ModelConfig(num_classes=1, encoder=encoder, input_channels=1))
    assert model.predict(_images(size=32, channels=1, n=1), verbose=0).shape == (1, 32, 32, 1)
