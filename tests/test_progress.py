"""Progress: a bar for a person, a line every so many items for a log file."""

import logging

import pytest

from unet_cbam import progress as module
from unet_cbam.progress import keras_verbosity, progress


def test_a_log_gets_a_line_every_hundred_items_and_one_at_the_end(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="unet_cbam.progress"):
        items = list(progress(range(250), desc="predicting", unit="image"))
    assert items == list(range(250))
    messages = [record.getMessage() for record in caplog.records]
    assert [m.split(",")[0] for m in messages[:2]] == [
        "predicting: 100 of 250 image(s)", "predicting: 200 of 250 image(s)"]
    assert len(messages) == 3 and messages[2].startswith("predicting: 250 image(s) in ")
    error = capsys.readouterr().err
    assert "\r" not in error and "%|" not in error  # no bar drawn into a file


def test_disabled_progress_is_the_items_themselves():
    items = [1, 2, 3]
    assert progress(items, desc="x", unit="y", enabled=False) is items


def test_importing_ipykernel_is_not_a_notebook():
    """papermill (the notebook tests) imports ipykernel; only a running kernel draws widgets."""
    import ipykernel  # noqa: F401

    assert not module._in_notebook()


def test_a_terminal_gets_a_bar(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(module, "interactive", lambda: True)
    bar = progress([1, 2], desc="x", unit="y")
    assert isinstance(bar, tqdm) and list(bar) == [1, 2]


@pytest.mark.parametrize("watched, enabled, expected", [
    (True, True, 1), (False, True, 2), (True, False, 2), (False, False, 2)])
def test_keras_draws_per_step_bars_only_for_a_person(monkeypatch, watched, enabled, expected):
    monkeypatch.setattr(module, "interactive", lambda: watched)
    assert keras_verbosity(enabled) == expected


def test_the_fingerprint_command_draws_no_bar_into_a_log(tmp_path, capsys):
    from helpers import write_pairs
    from unet_cbam.cli.fingerprint import main

    root = write_pairs(tmp_path / "data", count=3, size=(16, 16), channels=1)
    assert main([str(root), "--input-channels", "1"]) == 0  # progress on, stderr a file
    error = capsys.readouterr().err
    assert "\r" not in error and "verifying data" not in error.replace(
        "verifying data: 3 pair(s)", "")
