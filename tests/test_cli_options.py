import argparse
import dataclasses

import pytest

from unet_cbam.cli.options import add_config_options, apply_options
from unet_cbam.cli.train import SECTIONS, build_parser
from unet_cbam.config import RunConfig


def _parse(*argv):
    return apply_options(RunConfig(), build_parser().parse_args(list(argv)))


def test_every_config_field_is_an_option_with_help():
    help_text = build_parser().format_help()
    for section in SECTIONS.values():
        for field in dataclasses.fields(section):
            assert "--" + field.name.replace("_", "-") in help_text, field.name
    assert "{none, channel, spatial, cbam}" in help_text


def test_options_override_defaults_and_keep_the_rest():
    config = _parse("--epochs", "3", "--attention", "spatial", "--no-batch-norm",
                    "--input-size", "64", "96", "--class-colors", "[[0, 0, 0], [255, 0, 0]]",
                    "--encoder-weights", "none", "--learning-rate", "1e-4")
    assert config.train.epochs == 3
    assert config.model.attention == "spatial"
    assert config.model.batch_norm is False
    assert config.model.input_size == [64, 96]
    assert config.data.class_colors == [[0, 0, 0], [255, 0, 0]]
    assert config.model.encoder_weights is None
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.train.batch_size == RunConfig().train.batch_size


def test_options_apply_on_top_of_a_config_file_base():
    base = RunConfig()
    base.train.epochs = 11
    base.model.depth = 3
    arguments = build_parser().parse_args(["--depth", "2"])
    config = apply_options(base, arguments)
    assert config.model.depth == 2 and config.train.epochs == 11


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "many"], "epochs: expected an integer"),
    (["--val-fraction", "1.5"], "val_fraction 1.5 must be in"),
    (["--mask-encoding", "jpeg"], "mask_encoding: 'jpeg' is not one of"),
])
def test_bad_values_name_the_option(argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(*argv)


def test_duplicate_option_names_are_refused():
    @dataclasses.dataclass
    class A:
        seed: int = 0

    @dataclasses.dataclass
    class B:
        seed: int = 1

    with pytest.raises(ValueError, match="--seed is defined by both a and b"):
        add_config_options(argparse.ArgumentParser(), {"a": A, "b": B})


def test_string_options_stay_strings():
    config = _parse("--data", "2024", "--class-names", "1", "yes", "--loss", "ce+dice")
    assert config.data.data == "2024"
    assert config.data.class_names == ["1", "yes"]
    assert _parse("--data", "none").data.data is None
