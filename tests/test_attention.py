import keras
import numpy as np
import pytest

from unet_cbam import ModelConfig, attention_maps, build_unet


def _images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype("float32")


def test_cbam_maps_per_level_match_the_forward_pass():
    model = build_unet(ModelConfig(num_classes=1, depth=3, base_filters=8, attention_levels="all"))
    images = _images()
    maps = attention_maps(model, images, batch_size=2)
    assert sorted(maps) == [0, 1, 2]
    for level, gates in maps.items():
        channels = 8 * 2**level
        assert gates["channel"].shape == (3, channels)
        assert gates["spatial"].shape == (3, 32 // 2**level, 32 // 2**level)
        for values in gates.values():
            assert values.dtype == np.float32
            assert ((values > 0) & (values < 1)).all()
    # The gates must reproduce the layer's output exactly.
    layer = model.get_layer("skip1_cbam")
    probe = keras.Model(model.inputs, [layer.input, layer.output])
    skip, refined = probe.predict(images, verbose=0)
    rebuilt = skip * maps[1]["channel"][:, None, None, :] * maps[1]["spatial"][..., None]
    np.testing.assert_allclose(rebuilt, refined, rtol=1e-5, atol=1e-6)


def test_channel_and_spatial_modes_only_give_their_own_gates():
    channel = attention_maps(build_unet(ModelConfig(num_classes=1, depth=2, attention="channel")),
                             _images())
    spatial = attention_maps(build_unet(ModelConfig(num_classes=1, depth=2, attention="spatial")),
                             _images())
    assert all(set(g) == {"channel"} for g in channel.values())
    assert all(set(g) == {"spatial"} for g in spatial.values())


def test_backbone_levels_are_keyed_by_stride():
    maps = attention_maps(build_unet(ModelConfig(num_classes=1, encoder="resnet18")), _images(n=1,
                                                                                              size=64))
    assert sorted(maps) == [1, 2, 3, 4]
    assert maps[1]["spatial"].shape == (1, 32, 32)
    assert maps[4]["spatial"].shape == (1, 4, 4)


def test_model_without_attention_is_refused():
    with pytest.raises(ValueError, match="no attention layers"):
        attention_maps(build_unet(ModelConfig(num_classes=1, depth=2, attention="none")), _images())


def test_maps_survive_save_and_safe_load(tmp_path):
    model = build_unet(ModelConfig(num_classes=1, depth=2, base_filters=8))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    a, b = attention_maps(model, _images()), attention_maps(loaded, _images())
    for level in a:
        for key in a[level]:
            np.testing.assert_array_equal(a[level][key], b[level][key])


@pytest.mark.parametrize("position", ["skip", "decoder", "encoder"])
def test_attention_layers_know_their_level(position, tmp_path):
    from unet_cbam.attention import attention_layers

    model = build_unet(ModelConfig(num_classes=1, depth=3, base_filters=4,
                                   attention_position=position,
                                   attention_levels="all"))
    layers = attention_layers(model)
    assert sorted(layers) == [0, 1, 2]
    assert all(layer.level == level and layer.name == f"{position}{level}_cbam"
               for level, layer in layers.items())
    model.save(tmp_path / "m.keras")  # the level is saved with the layer
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert {level: layer.level for level, layer in attention_layers(loaded).items()} == \
        {0: 0, 1: 1, 2: 2}


def test_models_saved_before_layers_had_a_level_are_read_by_their_names():
    from pathlib import Path

    from unet_cbam.attention import attention_layers

    model = keras.saving.load_model(Path(__file__).parent / "data" / "cbam_skip_v1.keras",
                                    safe_mode=True, compile=False)
    layers = attention_layers(model)
    assert layers and all(layer.level is None for layer in layers.values())
    assert all(layer.name.startswith(f"skip{level}_") for level, layer in layers.items())
