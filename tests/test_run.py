import math
import subprocess
import sys

import pytest

from helpers import make_untrained_run
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unet_cbam.data.io import MaskCodec
from unet_cbam.run import CONFIG_FILE, RunFolder, class_names, codec_from_config


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


def test_load_model_registers_the_layers_itself(tmp_path):
    run = make_untrained_run(tmp_path / "run")
    script = ("import sys, unet_cbam\n"
              "assert 'keras' not in sys.modules\n"
              f"model = unet_cbam.load_model({str(run)!r})\n"
              "print(model.get_layer('skip0_cbam').__class__.__name__)")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "CBAM"
