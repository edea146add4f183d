"""unet-cbam COMMAND: one entry point; old module commands fail loudly."""

import subprocess
import sys
from pathlib import Path

import pytest

from unet_cbam.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_usage_lists_every_command(capsys):
    assert main([]) == 2
    usage = capsys.readouterr().err
    assert all(f"  {name}" in usage for name in COMMANDS)
    assert main(["--help"]) == 0 and "unet-cbam COMMAND --help" in capsys.readouterr().out


def test_an_unknown_command_is_refused_with_the_choices(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'; choose one of train, predict" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_names_itself_in_its_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: unet-cbam {command} ")


def test_errors_name_the_command_as_it_was_run(tmp_path, capsys):
    code = main(["evaluate", "--pred", str(tmp_path / "no"), "--truth", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("unet-cbam evaluate: error: ")


def test_python_m_unet_cbam_runs_the_commands():
    completed = subprocess.run([sys.executable, "-m", "unet_cbam", "fingerprint", "--help"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("usage: unet-cbam fingerprint ")


@pytest.mark.parametrize("module, command", [("unet_cbam.evaluate", "unet-cbam evaluate"),
                                             ("unet_cbam.export", "unet-cbam export")])
def test_library_modules_run_as_commands_fail_loudly(tmp_path, module, command):
    """They were documented commands once: exit 2 and name the command, never exit 0
    having done nothing."""
    completed = subprocess.run([sys.executable, "-m", module, "--pred", str(tmp_path),
                                "--truth", str(tmp_path)], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 2
    assert f"use: {command}" in completed.stderr
