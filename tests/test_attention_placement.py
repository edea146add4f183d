"""Where attention goes: attention_position and attention_levels."""

import keras
import numpy as np
import pytest

from unet_cbam.attention import attention_layers, attention_maps
from unet_cbam.cli.options import add_config_options, apply_options
from unet_cbam.config import ModelConfig, RunConfig, from_dict, to_dict
from unet_cbam.models import build_unet

PLACEMENTS = [  # every position, with all levels and with a subset
    ("skip", [2], [2]),
    ("decoder", [0, 2], [0, 2]),
    ("encoder", None, [0, 1, 2]),
]


@pytest.mark.slow
@pytest.mark.parametrize("position, levels, expected", PLACEMENTS)
def test_every_placement_builds_trains_saves_and_loads(tmp_path, position, levels, expected):
    config = ModelConfig(num_classes=1, depth=3, base_filters=4, input_channels=1,
                         attention_position=position, attention_levels=levels)
    model = build_unet(config)
    found = attention_layers(model)
    assert sorted(found) == expected
    assert all(layer.name == f"{position}{level}_cbam" for level, layer in found.items())
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    y = (x > 0.5).astype("float32")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.train_on_batch(x, y)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    maps = attention_maps(loaded, x)
    assert sorted(maps) == expected
    for level in expected:
        assert maps[level]["spatial"].shape == (2, 32 // 2**level, 32 // 2**level)
        assert maps[level]["channel"].shape == (2, 4 * 2**level)


def test_encoder_attention_is_seen_by_the_deeper_stages():
    """Encoder placement changes what the next stage receives, skip placement does not."""
    base = dict(num_classes=1, depth=2, base_filters=4, input_channels=1, attention_levels=[0])
    for identity, attended_name in ((False, "encoder0_cbam"), (True, "encoder0_identity")):
        encoder = build_unet(ModelConfig(attention_position="encoder",
                                         attention_identity=identity, **base))
        attended = encoder.get_layer(attended_name).output
        assert encoder.get_layer("encoder_stage0_pool").input is attended
        skip = build_unet(ModelConfig(attention_position="skip", attention_identity=identity,
                                      **base))
        assert skip.get_layer("encoder_stage0_pool").input is not skip.get_layer(
            attended_name.replace("encoder", "skip")).output


def test_backbone_encoder_attention_sits_inside_the_backbone_graph():
    config = ModelConfig(num_classes=1, encoder="resnet18", input_channels=3,
                         attention_position="encoder",
                         attention_levels=[2, 3], base_filters=8)
    model = build_unet(config)
    assert sorted(attention_layers(model)) == [2, 3]
    attended = model.get_layer("encoder2_identity").output  # x + cbam(x), the default
    consumers = [layer for layer in model.layers if any(
        node_input is attended for node in layer._inbound_nodes
        for node_input in node.input_tensors)]
    # The deeper backbone stage and the skip's concatenation both read the attended tensor.
    assert len(consumers) >= 2
    x = np.random.default_rng(0).random((1, 64, 64, 3)).astype("float32")
    assert sorted(attention_maps(model, x)) == [2, 3]


def test_backbone_skip_levels_start_at_one_and_none_means_no_layers():
    config = ModelConfig(num_classes=1, encoder="resnet18", input_channels=3, attention_levels=[1])
    assert config.attention_levels_available == [1, 2, 3, 4]
    assert ModelConfig(num_classes=1, encoder="resnet18", attention_position="decoder"
                       ).attention_levels_available == [0, 1, 2, 3, 4]
    assert ModelConfig(num_classes=1, attention="none", attention_levels=[1]).attended_levels == []


@pytest.mark.parametrize("fields, expected", [
    ({"attention_levels": "all"}, [0, 1, 2, 3]),
    ({"attention_levels": None}, [0, 1, 2, 3]),  # run folders from before the keywords
    ({"attention_levels": "downsampled"}, [1, 2, 3]),
    ({"attention_levels": "downsampled", "depth": 6}, [1, 2, 3, 4, 5]),
    ({"attention_levels": "downsampled", "depth": 1}, []),
    ({"attention_levels": "downsampled", "attention_position": "decoder"}, [1, 2, 3]),
    ({"attention_levels": "downsampled", "attention_position": "encoder"}, [1, 2, 3]),
    ({"attention_levels": "downsampled", "encoder": "resnet18"}, [1, 2, 3, 4]),
    ({"attention_levels": "all", "encoder": "resnet18"}, [1, 2, 3, 4]),
    ({"attention_levels": "downsampled", "encoder": "resnet18",
      "attention_position": "decoder"}, [1, 2, 3, 4]),
    ({"attention_levels": "all", "encoder": "resnet18", "attention_position": "decoder"},
     [0, 1, 2, 3, 4]),
])
def test_level_keywords_resolve_for_every_depth_encoder_and_position(fields, expected):
    config = from_dict(ModelConfig, fields)
    assert config.attended_levels == expected
    assert config.attention_levels == (fields["attention_levels"] or "all")
    assert from_dict(ModelConfig, to_dict(config)) == config


def test_the_default_attends_every_skip_but_the_full_resolution_one():
    assert ModelConfig(num_classes=1).attention_levels == "downsampled"
    assert ModelConfig(num_classes=1).attended_levels == [1, 2, 3]
    assert ModelConfig(num_classes=1, encoder="resnet18").attended_levels == [1, 2, 3, 4]


def test_downsampled_levels_build_attention_below_full_resolution_only():
    config = ModelConfig(num_classes=1, depth=3, base_filters=4, input_channels=1,
                         attention_levels="downsampled")
    assert sorted(attention_layers(build_unet(config))) == [1, 2]


@pytest.mark.parametrize("words, expected", [
    (["1", "3"], [1, 3]), (["all"], "all"), (["downsampled"], "downsampled"), (["none"], "all"),
])
def test_levels_on_the_command_line_take_a_list_or_one_keyword(words, expected):
    import argparse

    parser = argparse.ArgumentParser()
    add_config_options(parser, {"model": ModelConfig})
    arguments = parser.parse_args(["--attention-levels", *words])
    assert apply_options(RunConfig(), arguments).model.attention_levels == expected


@pytest.mark.parametrize("value", ["deep", ["1", "all"], 2.5])
def test_a_bad_levels_value_names_the_field_and_what_it_takes(value):
    message = (r"attention_levels: .* does not match a list of int, 'all', 'downsampled' "
               r"or none")
    with pytest.raises(ValueError, match=message):
        from_dict(ModelConfig, {"attention_levels": value})


@pytest.mark.parametrize("fields, message", [
    ({"attention_levels": [7]}, "attention_levels [7] must be distinct levels of [0, 1, 2, 3]"),
    ({"attention_levels": [1, 1]}, "attention_levels [1, 1] must be distinct"),
    ({"encoder": "resnet18", "attention_levels": [0]},
     "attention_levels [0] must be distinct levels of [1, 2, 3, 4]"),
    ({"attention_position": "middle"}, "attention_position: 'middle' is not one of"),
])
def test_unknown_levels_and_positions_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(ModelConfig, fields)


def test_placement_round_trips_in_yaml_and_on_the_command_line():
    import argparse

    config = ModelConfig(num_classes=1, attention_position="decoder", attention_levels=[2, 3])
    assert from_dict(ModelConfig, to_dict(config)) == config
    parser = argparse.ArgumentParser()
    add_config_options(parser, {"model": ModelConfig})
    arguments = parser.parse_args(["--attention-position", "encoder",
                                   "--attention-levels", "1", "3"])

    run = apply_options(RunConfig(), argparse.Namespace(**vars(arguments)))
    assert run.model.attention_position == "encoder"
    assert run.model.attention_levels == [1, 3]


@pytest.mark.parametrize("position", ["skip", "decoder", "encoder"])
def test_attention_identity_adds_the_input_back_and_round_trips(tmp_path, position):
    config = ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1,
                         attention_position=position,
                         attention_identity=True, attention_levels="all")
    model = build_unet(config)
    x = np.random.default_rng(1).random((2, 16, 16, 1)).astype("float32")
    for level, layer in attention_layers(model).items():
        identity = model.get_layer(f"{position}{level}_identity")
        probe = keras.Model(model.inputs, [layer.input, layer.output, identity.output])
        inputs, attended, added = probe.predict(x, verbose=0)
        np.testing.assert_allclose(added, inputs + attended, rtol=1e-6)
        assert not np.allclose(attended, 0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert sorted(attention_maps(loaded, x)) == [0, 1]
    plain = build_unet(ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1,
                                   attention_position=position, attention_identity=False))
    assert not [layer for layer in plain.layers if layer.name.endswith("_identity")]
    none = build_unet(ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1,
                                  attention="none",
                                  attention_identity=True))
    assert len(none.layers) == len(build_unet(ModelConfig(num_classes=1,
        depth=2, base_filters=4, input_channels=1, attention="none")).layers)


def test_attention_identity_round_trips_in_yaml_and_on_the_command_line():
    import argparse

    assert not from_dict(ModelConfig, to_dict(ModelConfig(num_classes=1, attention_identity=False))
                         ).attention_identity
    parser = argparse.ArgumentParser()
    add_config_options(parser, {"model": ModelConfig})
    assert RunConfig().model.attention_identity  # the default since the ablation
    arguments = parser.parse_args(["--no-attention-identity"])
    assert not apply_options(RunConfig(), arguments).model.attention_identity
    off = RunConfig(model=ModelConfig(num_classes=1, attention_identity=False))
    arguments = parser.parse_args(["--attention-identity"])
    assert apply_options(off, arguments).model.attention_identity


def test_a_run_written_before_identity_was_the_default_keeps_its_model(tmp_path):
    """A run folder's config.yaml without attention_identity was built without it: it
    reads as false (resume, precision rebuilds), while a --config file a user writes
    without the field gets today's default."""
    import yaml

    from unet_cbam.config import load_yaml, save_yaml
    from unet_cbam.run import RunFolder

    run = RunFolder(tmp_path / "old")
    run.path.mkdir()
    save_yaml(RunConfig(), run.config_path)
    data = yaml.safe_load(run.config_path.read_text())
    del data["model"]["attention_identity"]
    run.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run.config.model.attention_identity is False
    assert RunFolder(run.path).config.model == ModelConfig(attention_identity=False)
    assert load_yaml(RunConfig, run.config_path).model.attention_identity is True
    explicit = RunFolder(tmp_path / "explicit")
    explicit.path.mkdir()
    save_yaml(RunConfig(), explicit.config_path)  # written since: the field is there
    assert explicit.config.model.attention_identity is True


@pytest.mark.parametrize("saved", ["null", "missing"])
def test_a_run_written_before_the_level_keywords_keeps_attention_on_every_level(tmp_path,
                                                                                  saved):
    """Runs from before 2026-12-03 say ``attention_levels: null`` (or nothing) and were
    built with attention on every level: they still read so, while today's default is
    'downsampled'."""
    import yaml

    from unet_cbam.config import save_yaml
    from unet_cbam.run import RunFolder

    run = RunFolder(tmp_path / "old")
    run.path.mkdir()
    save_yaml(RunConfig(), run.config_path)
    data = yaml.safe_load(run.config_path.read_text())
    if saved == "null":
        data["model"]["attention_levels"] = None
    else:
        del data["model"]["attention_levels"]
    run.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run.config.model.attention_levels == "all"
    assert run.config.model.attended_levels == [0, 1, 2, 3]
    assert RunConfig().model.attended_levels == [1, 2, 3]
