"""A process killed (SIGKILL) inside each write window loses nothing it promised.

The package pauses inside the write window of a chosen file when the test-only
variables of ``unet_cbam.files`` are set (the temporary is complete, the rename
has not happened), and announces it through a marker file; the test then kills
the process there, resumes, and checks what is guaranteed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import make_untrained_run
from unet_cbam.cli.predict import main as predict_main
from unet_cbam.data.demo import generate_demo
from unet_cbam.files import PAUSE_AT_ENV, PAUSE_MARKER_ENV, is_temporary
from unet_cbam.run import RunFolder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TRAIN_FLAGS = ["--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "2",
               "--patch-size", "32", "--depth", "2", "--base-filters", "4",
               "--val-fraction", "0.5", "--augmentation", "none", "--quiet"]


def _kill_inside(command: list[str], window: str, marker: Path, timeout: float = 300) -> None:
    """Run ``command`` until it pauses in the write window of ``window``, then SIGKILL it."""
    environment = {**os.environ, PAUSE_AT_ENV: window, PAUSE_MARKER_ENV: str(marker)}
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"exited {process.returncode} before the window:\n"
                                     + process.stdout.read()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached the write window of {window}")
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temporary(p)]


@pytest.mark.parametrize("window, epochs_done", [
    ("epoch-0002.weights.h5", 1),   # inside the second epoch's checkpoint
    ("history.csv", 1),             # the first epoch's row, after its checkpoint
    ("model.keras", 1),             # the first best model, after checkpoint and row
])
def test_train_killed_in_a_write_window_resumes_with_every_epoch_once(tmp_path, window,
                                                                      epochs_done):
    data = generate_demo(tmp_path / "demo", count=4)
    run = RunFolder(tmp_path / "run")
    command = [sys.executable, "-m", "unet_cbam.cli.train", "--data", str(data),
               "--output", str(run.path), *TRAIN_FLAGS]
    _kill_inside(command, window, tmp_path / "paused")
    assert run.checkpoints()[0].epochs == epochs_done
    assert _temporaries(run.path)  # the killed write's temporary is still there

    from unet_cbam.cli.train import main as train_main
    assert train_main(["--output", str(run.path), "--resume", "--quiet"]) == 0
    history = run.read_history()
    assert history["epoch"] == [0.0, 1.0, 2.0]           # every epoch exactly once
    assert all(np.isfinite(history["loss"]))
    assert [c.epochs for c in run.checkpoints()] == [3, 2]
    model = keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
    assert model.count_params() > 0
    best = run.read_metrics()["best_epoch"]
    assert best == int(np.nanargmax(history["val_mean_dice"])) + 1
    assert not _temporaries(run.path)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    data = generate_demo(tmp_path / "demo", count=4)
    run = RunFolder(tmp_path / "run")
    from unet_cbam.cli.train import main as train_main
    flags = [f if f != "3" else "2" for f in TRAIN_FLAGS]  # 2 epochs first
    assert train_main(["--data", str(data), "--output", str(run.path), *flags]) == 0
    newest = run.checkpoints()[0]
    newest.weights_path.write_bytes(newest.weights_path.read_bytes()[:96])  # truncated
    assert train_main(["--output", str(run.path), "--resume", "--epochs", "3", "--quiet"]) == 0
    error = capsys.readouterr().err
    assert "epoch-0002.weights.h5: damaged checkpoint" in error
    assert "falling back to epoch-0001.weights.h5" in error
    assert run.read_history()["epoch"] == [0.0, 1.0, 2.0]

    for checkpoint in run.checkpoints():
        checkpoint.weights_path.write_bytes(b"\x89HDF\r\n")
    code = train_main(["--output", str(run.path), "--resume", "--epochs", "4", "--quiet"])
    error = capsys.readouterr().err
    assert code == 2
    assert "checkpoint: no readable checkpoint to resume from; start the run again" in error
    assert "Traceback" not in error


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def test_predict_killed_while_writing_a_mask_resumes_to_identical_outputs(tmp_path):
    import cv2

    run = make_untrained_run(tmp_path / "run")
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        cv2.imwrite(str(images / f"img{index}.png"), rng.integers(0, 256, (40, 48, 3), np.uint8))
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert predict_main(["--model", str(run), "--input", str(images), "--output", str(clean),
                         "--quiet"]) == 0
    command = [sys.executable, "-m", "unet_cbam.cli.predict", "--model", str(run), "--input",
               str(images), "--output", str(killed), "--quiet"]
    _kill_inside(command, "img2.png", tmp_path / "paused")
    assert not (killed / "img2.png").exists() and _temporaries(killed)
    finished = [line.split(",")[:2] for line in
                (killed / "summary.csv").read_text().splitlines()[1:]]
    assert finished == [[str(images / "img0.png"), "ok"], [str(images / "img1.png"), "ok"]]
    assert predict_main(["--model", str(run), "--input", str(images), "--output", str(killed),
                         "--quiet"]) == 0
    assert _digests(killed) == _digests(clean)
    assert not _temporaries(killed)
