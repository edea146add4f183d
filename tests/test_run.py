import math
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_untrained_run
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unet_cbam.data.io import MaskCodec
from unet_cbam.run import CONFIG_FILE, Checkpoint, RunFolder, class_names, codec_from_config


def test_config_split_metrics_fingerprint_round_trip(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert not run.exists() and run.read_fingerprint() is None
    config = RunConfig(model=ModelConfig(num_classes=3),
                       data=DataConfig(mask_encoding="indexed", class_names=["a", "b", "c"]),
                       train=TrainConfig(epochs=7))
    run.write_config(config)
    run.write_split(["x", "y"], ["z"])
    run.write_metrics({"mean_dice": 0.5})
    run.write_fingerprint({"images": 3})
    again = RunFolder(tmp_path / "run")
    assert again.exists() and again.config == config
    assert again.read_split() == {"train": ["x", "y"], "val": ["z"]}
    assert again.read_metrics() == {"mean_dice": 0.5}
    assert again.read_fingerprint() == {"images": 3}
    assert again.codec == MaskCodec("indexed", 3)
    assert again.class_names == ["a", "b", "c"]
    assert sorted(p.name for p in run.path.iterdir()) == sorted(
        [CONFIG_FILE, "split.json", "metrics.json", "fingerprint.json"])


def test_config_is_read_once(tmp_path):
    run = RunFolder(make_untrained_run(tmp_path / "run"))
    first = run.config
    run.config_path.write_text("not: [valid")
    assert run.config is first


def test_best_score_direction_and_missing_values(tmp_path):
    run = RunFolder(tmp_path)
    assert run.best_score("val_loss") is None
    run.history_path.write_text("epoch,val_loss,val_mean_dice\n0,0.4,0.6\n1,nan,0.8\n2,0.3,\n")
    assert run.best_score("val_loss") == 0.3
    assert run.best_score("val_mean_dice") == 0.8
    assert run.best_score("val_iou_x") is None
    assert math.isnan(run.read_history()["val_loss"][1])


def test_codec_and_default_class_names():
    binary = RunConfig(data=DataConfig(mask_encoding="binary", mask_values=[0, 1]))
    assert codec_from_config(binary) == MaskCodec("binary", 1, values=(0, 1))
    assert class_names(binary.data, codec_from_config(binary)) == ["background", "foreground"]
    indexed = RunConfig(model=ModelConfig(num_classes=3),
                        data=DataConfig(mask_encoding="indexed"))
    assert class_names(indexed.data, codec_from_config(indexed)) == ["class0", "class1", "class2"]
    with pytest.raises(ValueError, match="class_names has 1 names for 3 classes"):
        class_names(DataConfig(class_names=["x"]), codec_from_config(indexed))
    with pytest.raises(ValueError, match="never trained"):
        codec_from_config(RunConfig())


@pytest.mark.slow
def test_load_model_registers_the_layers_itself(tmp_path):
    run = make_untrained_run(tmp_path / "run")
    script = ("import sys, unet_cbam\n"
              "assert 'keras' not in sys.modules\n"
              f"model = unet_cbam.load_model({str(run)!r})\n"
              "print(model.get_layer('skip1_cbam').__class__.__name__)")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "CBAM"


def _save(text):
    def save_weights(path):
        Path(path).write_text(text)
    return save_weights


def test_checkpoints_keep_the_two_newest_and_write_weights_last(tmp_path):
    run = RunFolder(tmp_path)
    for epochs in (1, 2, 3):
        run.write_checkpoint(epochs, _save(f"w{epochs}"), {"loss": 1.0 / epochs})
    checkpoints = run.checkpoints()
    assert [c.epochs for c in checkpoints] == [3, 2]
    assert checkpoints[0].weights_path.read_text() == "w3"
    assert checkpoints[0].logs == {"loss": 1 / 3}
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == [
        "epoch-0002.json", "epoch-0002.weights.h5", "epoch-0003.json", "epoch-0003.weights.h5"]

    def dying(path):
        Path(path).write_text("half")
        raise KeyboardInterrupt  # killed while writing the weights
    with pytest.raises(KeyboardInterrupt):
        run.write_checkpoint(4, dying, {"loss": 0.2})
    assert [c.epochs for c in run.checkpoints()] == [3, 2]  # epoch 4 is not complete
    assert not [p for p in run.checkpoint_dir.iterdir() if p.name.startswith(".unet_cbam-")]


def test_legacy_backup_and_restore_checkpoint_is_still_found(tmp_path):
    run = RunFolder(tmp_path)
    run.checkpoint_dir.mkdir()
    (run.checkpoint_dir / "latest.weights.h5").write_text("old")
    (run.checkpoint_dir / "training_metadata.json").write_text('{"epoch": 5, "batch": -1}')
    assert [(c.epochs, c.weights_path.name) for c in run.checkpoints()] == [
        (5, "latest.weights.h5")]


def test_history_is_aligned_with_the_checkpoint(tmp_path):
    run = RunFolder(tmp_path)
    for epoch in range(3):
        run.append_history(epoch, {"loss": 1.0 - epoch / 10, "val_loss": 2.0})
    run.append_history(1, {"loss": 0.85, "val_loss": 2.0})       # a repeated epoch replaces
    assert [r["epoch"] for r in run.history_rows()] == ["0", "2", "1"]
    run.write_history(sorted(run.history_rows(), key=lambda r: int(r["epoch"])))
    # a row beyond the checkpoint (its epoch was lost with the process) is dropped
    run.align_history(Checkpoint(2, tmp_path / "x", {"loss": 0.9, "val_loss": 2.0}))
    assert run.read_history()["epoch"] == [0.0, 1.0]
    # the checkpoint's own row, missing from history, is rebuilt from its logs
    run.write_history(run.history_rows()[:1])
    run.align_history(Checkpoint(2, tmp_path / "x", {"loss": 0.9, "val_loss": 2.0}))
    history = run.read_history()
    assert history["epoch"] == [0.0, 1.0] and history["loss"] == [1.0, 0.9]
