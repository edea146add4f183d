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
    assert "--attention {none,channel,spatial,cbam}" in help_text


@pytest.mark.parametrize("module", ["train", "predict", "evaluate"])
def test_help_text_shows_choices_defaults_once_and_no_stale_notes(module):
    import importlib
    import re

    parser = importlib.import_module(f"unet_cbam.cli.{module}").build_parser()
    help_text = " ".join(parser.format_help().split())
    assert "(default: None)" not in help_text
    assert "YAML config only" not in help_text
    assert not re.search(r"\(default: [^)]*\) \(default", help_text)
    for action in parser._actions:
        if action.choices is not None:  # a choice option shows its choices, never YAML
            assert action.metavar is None or action.metavar.startswith("{"), action.dest
    if module == "train":
        assert "--output RUN_DIR run folder to create (default: runs/<date>-<time>)" in help_text
        assert "--mask-encoding {auto,binary,indexed,palette,rgb}" in help_text
        assert "--lr-schedule {cosine,constant,plateau}" in help_text
        assert "--augmentations YAML" in help_text and "'[{HorizontalFlip: {p: 0.5}}]'" in help_text


def test_log_file_and_verbose(tmp_path):
    import logging

    from unet_cbam.cli.options import setup_logging

    arguments = build_parser().parse_args(["--verbose", "--log-file", str(tmp_path / "l.log")])
    setup_logging(arguments)
    logging.getLogger("unet_cbam.test").debug("written to the file")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "written to the file" in (tmp_path / "l.log").read_text()
    logging.basicConfig(force=True)


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
])
def test_bad_values_name_the_option(argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(*argv)


def test_a_bad_choice_is_refused_by_the_parser_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        _parse("--mask-encoding", "jpeg")
    assert "--mask-encoding: invalid choice: 'jpeg' (choose from 'auto', 'binary'" in \
        capsys.readouterr().err


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
