"""Semi-supervised training (``--unlabeled``): pseudo-labels, the unlabelled folder's
checks, and short runs (lower loss, resume, mirrored, folds)."""

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from helpers import Interrupt, run_on_two_cpus
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unet_cbam.data.demo import generate_demo
from unet_cbam.data.io import DataError
from unet_cbam.losses import SegmentationLoss
from unet_cbam.run import RunFolder
from unet_cbam.semisupervised import (
    ConsistencyTraining,
    find_unlabeled,
    pseudo_targets,
    rampup,
    verify_unlabeled,
)
from unet_cbam.training import train

SMALL_MODEL = ModelConfig(num_classes=1, depth=3, base_filters=8, input_channels=1)


def _unlabeled(folder: Path, count: int = 6, seed: int = 3) -> Path:
    """Images without masks: demo images under other names."""
    made = generate_demo(folder.with_name(folder.name + "-pairs"), count=count, seed=seed)
    folder.mkdir(parents=True)
    for path in sorted((made / "images").iterdir()):
        shutil.copy(path, folder / f"u_{path.name}")
    shutil.rmtree(made)
    return folder


def _config(data, unlabeled, epochs=3, steps=4, **train):
    return RunConfig(
        model=SMALL_MODEL,
        data=DataConfig(data=str(data), val_fraction=0.34, patch_size=64,
                        augmentation="light", unlabeled=str(unlabeled)),
        train=TrainConfig(epochs=epochs, steps_per_epoch=steps, batch_size=4, warmup_epochs=0,
                          **train))


# --------------------------------------------------------------------------
# pseudo-labels and the loss, on hand-made probabilities
# --------------------------------------------------------------------------

def test_pseudo_labels_keep_confident_real_pixels_only_sigmoid():
    p = np.array([[[[0.99], [0.96], [0.5]], [[0.02], [0.2], [0.97]]]], np.float32)  # 1x2x3
    valid = np.array([[[1, 1, 1], [1, 1, 0]]], np.float32)  # the last pixel is padding
    targets = np.asarray(pseudo_targets(p, valid, 0.95))
    kept = targets[..., -1]
    np.testing.assert_array_equal(kept, [[[1, 1, 0], [1, 0, 0]]])
    np.testing.assert_array_equal(targets[..., 1], [[[1, 1, 0], [0, 0, 0]]])  # foreground
    np.testing.assert_array_equal(targets[..., 0], [[[0, 0, 0], [1, 0, 0]]])  # background


def test_pseudo_labels_keep_confident_real_pixels_only_softmax():
    p = np.array([[[[0.96, 0.02, 0.02], [0.1, 0.1, 0.8], [0.0, 0.0, 1.0]]]], np.float32)
    valid = np.ones((1, 1, 3), np.float32)
    targets = np.asarray(pseudo_targets(p, valid, 0.9))
    np.testing.assert_array_equal(targets, [[[[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 1]]]])


def test_the_consistency_loss_is_the_runs_loss_with_unconfident_pixels_ignored():
    # two pixels confident (foreground 0.97, background 0.99), one not (0.6): the teacher
    teacher = np.array([[[[0.97], [0.01], [0.6]]]], np.float32)
    targets = pseudo_targets(teacher, np.ones((1, 1, 3), np.float32), 0.95)
    training = ConsistencyTraining(keras.Sequential([keras.Input((1, 3, 1))]), weight=1.0,
                                   confidence=0.95, rampup_steps=0)
    training.compile(loss=SegmentationLoss("bce+dice"))
    student = np.array([[[[0.8], [0.3], [0.0]]]], np.float32)  # the last one: wrong, unseen
    ce = -np.log([0.8, 0.7]).mean()  # the two kept pixels' true-class probabilities
    fg = (2 * 0.8 + 1e-5) / (0.8 + 0.3 + 1 + 1e-5)  # Dice per label over kept pixels
    bg = (2 * 0.7 + 1e-5) / (0.2 + 0.7 + 1 + 1e-5)
    expected = ce + 1 - (fg + bg) / 2
    assert float(training.unlabeled_loss(targets, student)) == pytest.approx(expected, rel=1e-5)


def test_rampup_rises_from_near_zero_to_one():
    assert float(rampup(0, 100)) == pytest.approx(np.exp(-5.0), rel=1e-6)
    assert float(rampup(50, 100)) == pytest.approx(np.exp(-5.0 * 0.25), rel=1e-6)
    assert float(rampup(100, 100)) == 1.0 and float(rampup(500, 100)) == 1.0
    assert float(rampup(0, 0)) == 1.0


# --------------------------------------------------------------------------
# the unlabelled folder
# --------------------------------------------------------------------------

def test_an_unlabeled_folder_is_refused_when_missing_empty_or_holding_masks(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        find_unlabeled(tmp_path / "nowhere", set())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image file"):
        find_unlabeled(tmp_path / "empty", set())
    pairs = generate_demo(tmp_path / "pairs", count=2)
    with pytest.raises(DataError, match=r"a masks/ subfolder in the unlabelled folder"):
        find_unlabeled(pairs, set())
    unlabeled = _unlabeled(tmp_path / "unl", count=2)
    shutil.copy(pairs / "images" / "demo_000.png", unlabeled / "demo_000.png")
    with pytest.raises(DataError) as error:
        find_unlabeled(unlabeled, {"demo_000", "demo_001"})
    assert error.value.problems == [
        f"{unlabeled / 'demo_000.png'}: named like the labelled pair 'demo_000'; an image "
        "with a mask belongs in --data only"]


def test_bad_unlabeled_files_are_each_reported_by_name(tmp_path):
    unlabeled = _unlabeled(tmp_path / "unl", count=3)
    (unlabeled / "broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(unlabeled / "mask_like.png"), np.tile([0, 255], (16, 8)).astype(np.uint8))
    cv2.imwrite(str(unlabeled / "deep.png"), np.full((16, 16), 4000, np.uint16))
    with pytest.raises(DataError) as error:
        verify_unlabeled(unlabeled, channels=1, fingerprint={"dtype": ["uint8"]},
                         labelled_stems=set(), progress=False)
    problems = "\n".join(error.value.problems)
    assert len(error.value.problems) == 3
    assert f"{unlabeled / 'broken.png'}: not a readable image" in problems
    assert f"{unlabeled / 'mask_like.png'}: holds only the values [0, 255], like a mask" \
        in problems
    assert f"{unlabeled / 'deep.png'}: uint16 pixels, the labelled images' are uint8" in problems


def test_given_mix_settings_without_unlabeled_images_are_an_error(tmp_path):
    data = generate_demo(tmp_path / "demo", count=4)
    config = RunConfig(model=SMALL_MODEL, data=DataConfig(data=str(data), patch_size=64),
                       train=TrainConfig(epochs=1, steps_per_epoch=1, confidence=0.9))
    with pytest.raises(ValueError, match="confidence set without unlabeled images"):
        train(config, tmp_path / "run", progress=False)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------

def test_a_short_semi_supervised_run_lowers_the_supervised_loss_and_records_its_data(tmp_path):
    data = generate_demo(tmp_path / "demo", count=6)
    unlabeled = _unlabeled(tmp_path / "unl", count=6)
    result = train(_config(data, unlabeled, epochs=4, learning_rate=3e-3), tmp_path / "run",
                   progress=False)
    history = result.history
    assert history["supervised_loss"][-1] < 0.9 * history["supervised_loss"][0], history
    assert all(0 <= c <= 1 for c in history["confident"])
    assert "val_unlabeled_loss" not in history and "val_supervised_loss" not in history
    run = RunFolder(tmp_path / "run")
    assert run.config.data.unlabeled == str(unlabeled)
    plan = run.config.plan
    assert {name: plan[name]["value"] for name in ("unlabeled_ratio", "unlabeled_weight",
                                                    "unlabeled_rampup", "confidence")} == {
        "unlabeled_ratio": 1, "unlabeled_weight": 1.0, "unlabeled_rampup": 0.2,
        "confidence": 0.95}
    recorded = json.loads(run.fingerprint_path.read_text())["unlabeled"]
    assert recorded["folder"] == str(unlabeled) and recorded["count"] == 6
    model = keras.saving.load_model(run.model_path, compile=False, safe_mode=True)
    assert type(model).__name__ == "Functional"  # the plain network, not the trainer


@pytest.mark.slow
def test_a_resumed_semi_supervised_run_matches_an_uninterrupted_one(tmp_path):
    data = generate_demo(tmp_path / "demo", count=4)
    unlabeled = _unlabeled(tmp_path / "unl", count=3)
    config = _config(data, unlabeled, epochs=2, steps=2)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, patch_size=32))
    whole = train(config, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False, callbacks=[Interrupt(epoch=1)])
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, int(self.model.optimizer.iterations.numpy())))
    resumed = train(config, tmp_path / "cut", resume=True, progress=False, callbacks=[Record()])
    assert seen == [(1, 2)]
    assert resumed.history["epoch"] == whole.history["epoch"] == [0, 1]
    assert sorted(resumed.history) == sorted(whole.history)
    for name in ("supervised_loss", "unlabeled_loss", "val_loss"):  # epoch 1: the same run
        np.testing.assert_allclose(resumed.history[name][:1], whole.history[name][:1],
                                   rtol=1e-5)


@pytest.mark.slow
def test_semi_supervised_folds_and_the_mirrored_strategy(tmp_path):
    """One fold (``--fold 0`` of 2) of a semi-supervised run under the mirrored strategy:
    the fold trains with the unlabelled images on two replicas. (Training every fold and
    the cross-validation metrics are test_folds' business; a second fold here trained
    again for nothing new.)"""
    data = generate_demo(tmp_path / "demo", count=4)
    unlabeled = _unlabeled(tmp_path / "unl", count=3)
    completed = run_on_two_cpus(f"""
        from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
        from unet_cbam.folds import train_folds
        config = RunConfig(
            model=ModelConfig(num_classes=1, depth=2, base_filters=8),
            data=DataConfig(data={str(data)!r}, patch_size=32, unlabeled={str(unlabeled)!r}),
            train=TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, strategy="mirrored",
                              folds=2, fold=0))
        [result] = train_folds(config, {str(tmp_path / "run")!r}, progress=False)
        print("fold", result.run_dir.name, result.history["supervised_loss"][0],
              result.history["confident"][0])
    """)
    assert completed.returncode == 0, completed.stderr[-3000:]
    [line] = [line for line in completed.stdout.splitlines() if line.startswith("fold ")]
    name, loss, confident = line.split()[1:]
    assert name == "fold_0" and np.isfinite(float(loss)) and 0 <= float(confident) <= 1
    run = RunFolder(tmp_path / "run" / "fold_0")
    assert run.config.data.unlabeled == str(unlabeled)
    assert run.config.train.strategy == "mirrored"
    assert not (tmp_path / "run" / "fold_1").exists()
