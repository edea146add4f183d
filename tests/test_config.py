import pytest

from unet_cbam.config import ModelConfig, from_dict, load_yaml, save_yaml, to_dict


def test_yaml_round_trip(tmp_path):
    config = ModelConfig(encoder="resnet34", depth=4, num_classes=3, input_size=[64, 96],
                         attention="spatial", cbam_variant="blog", dropout=0.25)
    path = tmp_path / "model.yaml"
    save_yaml(config, path)
    assert load_yaml(ModelConfig, path) == config
    assert "encoder: resnet34" in path.read_text()


def test_defaults_resolve_depth_per_encoder():
    assert ModelConfig().resolved_depth == 4 and ModelConfig().divisor == 16
    assert ModelConfig(encoder="vgg16").resolved_depth == 5
    assert ModelConfig(encoder="vgg16").divisor == 32


def test_unknown_field_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("encoder: unet\nattenion: cbam\n")
    with pytest.raises(ValueError, match=r"bad.yaml: .*unknown field\(s\) attenion"):
        load_yaml(ModelConfig, path)


@pytest.mark.parametrize("data, message", [
    ({"depth": "4"}, "depth: expected an integer, got '4'"),
    ({"attention": "cbma"}, "attention: 'cbma' is not one of"),
    ({"batch_norm": "yes"}, "batch_norm: expected true or false"),
    ({"dropout": 1.5}, "dropout 1.5 must be in"),
    ({"spatial_kernel_size": 4}, "spatial_kernel_size 4 must be a positive odd"),
    ({"input_size": [64]}, r"input_size \[64\] must be \[height, width\]"),
    ({"depth": 6, "encoder": "resnet18"}, "depth 6 must be between 1 and 5"),
    ({"encoder_weights": "imagenet"}, "needs a backbone encoder"),
    ({"encoder": "resnet18", "encoder_weights": "imagenet", "input_channels": 1},
     "needs input_channels 3"),
])
def test_bad_values_are_named(data, message):
    with pytest.raises(ValueError, match=message):
        from_dict(ModelConfig, data)


def test_ints_widen_to_floats_and_none_strings_mean_none():
    config = from_dict(ModelConfig, {"dropout": 0, "encoder": "resnet18",
                                     "encoder_weights": "none"})
    assert isinstance(config.dropout, float)
    assert config.encoder_weights is None
    assert to_dict(config)["dropout"] == 0.0


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(ModelConfig, tmp_path / "missing.yaml")
