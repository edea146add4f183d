import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from unet_cbam.cli.train import main as train_main
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_yaml
from unet_cbam.data.demo import generate_demo
from unet_cbam.training import train

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = ModelConfig(depth=3, base_filters=8, input_channels=1)


def _isbi_subset(isbi_dir, tmp_path, stems=range(6)):
    """A few ISBI slices, linked (never copied) into a temporary data folder."""
    root = tmp_path / "isbi"
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
        for index in stems:
            (root / kind / f"slice{index:02d}.png").symlink_to(
                isbi_dir / kind / f"slice{index:02d}.png")
    return root


def _config(data_dir, epochs=2, steps=4, patch=64, batch=4, **train):
    return RunConfig(
        model=SMALL_MODEL,
        data=DataConfig(data=str(data_dir), val_fraction=0.34, patch_size=patch,
                        class_names=["membrane", "cell"], augmentation="light"),
        train=TrainConfig(epochs=epochs, steps_per_epoch=steps, batch_size=batch,
                          warmup_epochs=0, **train))


def test_short_run_on_isbi_lowers_the_loss(isbi_dir, tmp_path):
    config = _config(_isbi_subset(isbi_dir, tmp_path), epochs=6, steps=6, patch=96, batch=4,
                     learning_rate=3e-3)
    result = train(config, tmp_path / "run", progress=False)
    losses = result.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.history["val_loss"][-1] < result.history["val_loss"][0]
    assert set(result.metrics["classes"]) == {"membrane", "cell"}
    saved = load_yaml(RunConfig, tmp_path / "run" / "config.yaml")
    assert saved.data.mask_encoding == "binary" and saved.data.mask_values == [0, 255]


class _Interrupt(keras.callbacks.Callback):
    """Dies in the middle of an epoch, as a killed process would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise KeyboardInterrupt


def test_resume_continues_epochs_history_and_optimizer(tmp_path):
    data = generate_demo(tmp_path / "demo", count=6)
    run = tmp_path / "run"
    config = _config(data, epochs=4, steps=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, progress=False, callbacks=[_Interrupt(epoch=2)])
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + two completed epochs; the third was lost
    metadata = json.loads((run / "checkpoint" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2

    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config, run, progress=False)
    changed = RunConfig(model=ModelConfig(depth=2, input_channels=1), data=config.data,
                        train=config.train)
    with pytest.raises(ValueError, match="model.depth"):
        train(changed, run, resume=True, progress=False)

    split_before = (run / "split.json").read_text()
    seen = []
    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, int(self.model.optimizer.iterations.numpy())))
    result = train(config, run, resume=True, progress=False, callbacks=[Record()])
    assert seen == [(2, 6), (3, 9)]
    assert result.history["epoch"] == [0, 1, 2, 3]
    assert (run / "split.json").read_text() == split_before


def test_train_py_on_the_demo_data_writes_every_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train_main(["--output", "runs/demo", "--epochs", "2", "--steps-per-epoch", "2",
                       "--batch-size", "2", "--patch-size", "64", "--depth", "2",
                       "--base-filters", "8", "--quiet"])
    assert code == 0
    assert (tmp_path / "data" / "demo" / "images").is_dir()  # generated on first use
    run = tmp_path / "runs" / "demo"
    for name in ["config.yaml", "split.json", "model.keras", "history.csv",
                 "training_curves.png", "metrics.json", "checkpoint/training_metadata.json"]:
        assert (run / name).is_file(), name
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["depth"] == 2 and config["train"]["epochs"] == 2
    history = (run / "history.csv").read_text().splitlines()
    assert "learning_rate" in history[0] and "val_dice_foreground" in history[0]
    assert len(history) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["classes"]) == {"background", "foreground"}
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    assert model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0).shape == (1, 64, 64, 1)


def test_train_py_reports_bad_data_and_exits_non_zero(tmp_path, capsys):
    data = generate_demo(tmp_path / "demo", count=3)
    (data / "masks" / "demo_001.png").unlink()
    (data / "images" / "demo_002.png").write_bytes(b"")
    code = train_main(["--data", str(data), "--output", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2
    assert "demo_001.png: no mask named demo_001" in error
    assert "demo_002.png: empty file" in error
    assert "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_train_py_refuses_bad_options(capsys):
    assert train_main(["--attention", "cbma"]) == 2
    assert "attention: 'cbma' is not one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--no-such-option"])


def test_mixed_precision_run(tmp_path):
    data = generate_demo(tmp_path / "demo", count=4)
    config = _config(data, epochs=1, steps=2, mixed_precision=True)
    result = train(config, tmp_path / "run", progress=False)
    assert np.isfinite(result.history["loss"]).all()
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True,
                                    compile=False)
    assert model.get_layer("decoder_stage0_conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    data = generate_demo(tmp_path / "demo", count=4)
    script = textwrap.dedent(f"""
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
        from unet_cbam.training import make_strategy, train
        config = RunConfig(
            model=ModelConfig(depth=2, base_filters=8),
            data=DataConfig(data={str(data)!r}, patch_size=32, val_fraction=0.5),
            train=TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, strategy="mirrored"))
        print("replicas", make_strategy(config.train).num_replicas_in_sync)
        result = train(config, {str(tmp_path / "run")!r}, progress=False)
        print("loss", result.history["loss"][0])
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "replicas 2" in completed.stdout
    assert (tmp_path / "run" / "model.keras").is_file()
