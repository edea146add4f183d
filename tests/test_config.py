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


def test_choices_are_checked_by_the_dataclasses_themselves():
    """The Python API is refused a value outside a Literal's choices, as the CLI is."""
    from unet_cbam.config import DataConfig, InferenceConfig, TrainConfig

    with pytest.raises(ValueError, match="attention_position: 'bottom' is not one of"):
        ModelConfig(attention_position="bottom")
    with pytest.raises(ValueError, match="attention_levels: 'some' does not match"):
        ModelConfig(attention_levels="some")
    with pytest.raises(ValueError, match="mask_encoding: 'colour' is not one of"):
        DataConfig(mask_encoding="colour")
    with pytest.raises(ValueError, match="runtime: 'gpu' is not one of"):
        InferenceConfig(runtime="gpu")
    with pytest.raises(ValueError, match="optimizer: 'lamb' is not one of"):
        TrainConfig(optimizer="lamb")
    assert ModelConfig(attention_levels=[1, 2]).attention_levels == [1, 2]
    assert DataConfig(binary_threshold=3).binary_threshold == 3


@pytest.mark.parametrize("text, seconds, shown", [
    ("20m", 1200.0, "20m"), ("1h30m", 5400.0, "1h30m"), ("90", 90.0, "1m30s"),
    ("2.5s", 2.5, "2.5s"), (600, 600.0, "10m")])
def test_durations_become_seconds_when_the_config_is_made(text, seconds, shown):
    from unet_cbam.config import TrainConfig, format_duration, parse_duration

    train = TrainConfig(time_budget=text, cluster_timeout=text)
    assert train.time_budget == train.cluster_timeout == seconds
    assert format_duration(seconds) == shown and parse_duration(shown) == seconds


def test_a_saved_config_keeps_seconds_normalization_and_inference_as_types(tmp_path):
    from unet_cbam.config import DataConfig, RunConfig, TrainConfig, TunedInference
    from unet_cbam.data.normalization import Normalization

    tuned = {"validation_images": 4, "confidence": 0.95,
             "classes": {"fg": {"min_size": 3, "largest_only": False, "fill_holes": True,
                                "validation_dice": [0.5, 0.6]}},
             "threshold": 0.4, "threshold_dice": {"0.5": 0.5, "0.4": 0.55}}
    config = RunConfig(data=DataConfig(normalization={"mode": "percentile", "low": [1],
                                                      "high": [9]}),
                       train=TrainConfig(time_budget="20m"), inference=tuned)
    assert config.data.normalization == Normalization("percentile", (1.0,), (9.0,))
    assert isinstance(config.inference, TunedInference) and config.inference.threshold == 0.4
    save_yaml(config, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "time_budget: 1200.0" in text and "mode: percentile" in text
    loaded = load_yaml(RunConfig, tmp_path / "c.yaml")
    assert loaded == config
    assert loaded.inference.to_config() == tuned
    with pytest.raises(ValueError, match="inference: unknown field"):
        RunConfig(inference={"threshold": 0.4, "thresholds": 1})


def test_one_threshold_rule_for_predict_and_export():
    from unet_cbam.config import InferenceConfig, TunedInference

    tuned = TunedInference(threshold=0.3)
    assert InferenceConfig().resolve_threshold(tuned) == 0.3
    assert InferenceConfig().resolve_threshold(None) == 0.5
    assert InferenceConfig(threshold=0.7).resolve_threshold(tuned) == 0.7
    assert InferenceConfig(postprocess=False).resolve_threshold(tuned) == 0.5
    assert InferenceConfig().postprocessing(tuned) is None  # no step chosen
    steps = TunedInference(classes={"fg": {"min_size": 4}})
    assert InferenceConfig().postprocessing(steps) is steps
    assert InferenceConfig(postprocess=False).postprocessing(steps) is None
