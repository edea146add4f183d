import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import yaml

from helpers import Interrupt, make_untrained_run, run_on_two_cpus
from unet_cbam.callbacks import BestModelCheckpoint
from unet_cbam.cli.train import main as train_main
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_yaml, save_yaml
from unet_cbam.data.demo import generate_demo
from unet_cbam.run import RunFolder
from unet_cbam.training import train

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = ModelConfig(num_classes=1, depth=3, base_filters=8, input_channels=1)


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


def test_short_run_on_isbi_lowers_the_loss_then_predicts_and_evaluates(isbi_dir, tmp_path):
    """The end-to-end path of the fast tier: train on real data, predict held-out slices
    with the run, score the masks."""
    from unet_cbam.cli.evaluate import main as evaluate_main
    from unet_cbam.cli.predict import main as predict_main

    config = _config(_isbi_subset(isbi_dir, tmp_path), epochs=6, steps=6, patch=96, batch=4,
                     learning_rate=3e-3)
    result = train(config, tmp_path / "run", progress=False)
    losses = result.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.history["val_loss"][-1] < result.history["val_loss"][0]
    assert set(result.metrics["classes"]) == {"membrane", "cell"}
    saved = load_yaml(RunConfig, tmp_path / "run" / "config.yaml")
    assert saved.data.mask_encoding == "binary" and saved.data.mask_values == [0, 255]

    held_out = _isbi_subset(isbi_dir, tmp_path / "test", stems=(28, 29))
    out = tmp_path / "out"
    assert predict_main(["--model", str(tmp_path / "run"), "--input", str(held_out / "images"),
                         "--output", str(out), "--quiet"]) == 0
    written = cv2.imread(str(out / "slice28.png"), cv2.IMREAD_UNCHANGED)
    assert written.shape == (512, 512) and set(np.unique(written)) <= {0, 255}
    assert evaluate_main(["--pred", str(out), "--truth", str(held_out / "masks"),
                          "--config", str(tmp_path / "run")]) == 0
    scores = json.loads((out / "evaluation.json").read_text())
    assert scores["images"] == 2 and scores["classes"]["cell"]["pooled_dice"] > 0.5


@pytest.mark.slow
def test_validation_steps_score_the_same_first_batches_after_each_epoch(isbi_dir, tmp_path):
    """``validation_steps``: fit scores that many batches an epoch (a dataset that ends
    there, used up each pass), the final scores every batch."""
    import keras

    class Counter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            counts.append(0)

        def on_test_batch_end(self, batch, logs=None):
            counts[-1] += 1

    counts: list[int] = []
    config = _config(_isbi_subset(isbi_dir, tmp_path, stems=(0, 1, 2)), epochs=2, steps=1,
                     patch=64, batch=4, validation_steps=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ran out of data.*")
        result = train(config, tmp_path / "run", progress=False, callbacks=[Counter()])
    assert counts == [2, 2]  # of 16: one 512 x 512 slice in 64 x 64 patches, 4 a batch
    assert len(result.history["val_loss"]) == 2


@pytest.mark.slow
def test_resume_continues_epochs_history_and_optimizer(tmp_path):
    data = generate_demo(tmp_path / "demo", count=6)
    run = tmp_path / "run"
    config = _config(data, epochs=4, steps=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, progress=False, callbacks=[Interrupt(epoch=2)])
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + two completed epochs; the third was lost
    assert [c.epochs for c in RunFolder(run).checkpoints()] == [2, 1]

    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config, run, progress=False)
    changed = RunConfig(model=ModelConfig(num_classes=1, depth=2, input_channels=1),
                        data=config.data,
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


@pytest.mark.slow
def test_a_time_budgeted_run_resumes_with_its_re_planned_epochs_and_schedule(tmp_path,
                                                                            monkeypatch):
    import unet_cbam.training as training
    from unet_cbam.optim import MovableCosineDecay

    class SlowerThanMeasured(training.TimeBudget):
        """Measured at 0.1 s a step; training takes 100 s a step (on a fake clock, which
        nothing else moves). Whole epochs only: the shorter last epoch is
        test_callbacks' (here it would depend on the real seconds spent)."""
        MIN_LAST_EPOCH = float("inf")

        def __init__(self, *args, **kwargs):
            self.now = [0.0]
            super().__init__(*args, **kwargs, clock=lambda: self.now[0])
            budgets.append(self.seconds)  # what training got: 1500 s less the real time spent

        def on_train_batch_end(self, batch, logs=None):
            self.now[0] += 100.0
            super().on_train_batch_end(batch, logs)
    budgets = []
    monkeypatch.setattr(training, "measure_step_seconds", lambda step: (0.1, 0.1))
    monkeypatch.setattr(training, "TimeBudget", SlowerThanMeasured)
    data = generate_demo(tmp_path / "demo", count=6)
    run = tmp_path / "run"
    config = _config(data, epochs=1, steps=3, patch=32, time_budget="1500s")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, warmup_epochs=1))
    with pytest.raises(KeyboardInterrupt):
        train(config, run, progress=False, callbacks=[Interrupt(epoch=1)])
    saved = RunFolder(run).config
    # Planned ~5000 epochs of 3 steps; after epoch 1 (300 s on the fake clock) of what
    # training got (1500 s less the final steps' share and the real seconds spent before
    # it), as many 300-s epochs as fit, and one more if it ends at most 2 % late.
    left = budgets[0] - 300
    epochs = 1 + int(left // 300) + (left % 300 > 300 - 0.02 * budgets[0])
    assert epochs in (4, 5)
    assert saved.train.epochs == saved.plan["epochs"]["value"] == epochs
    assert "re-planned after epoch 1: 100 s a step" in saved.plan["epochs"]["reason"]

    other = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                  time_budget="30m"))
    with pytest.raises(ValueError, match="time_budget 30m differs from the saved 25m"):
        train(other, run, resume=True, progress=False)
    rates = []
    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            optimizer = self.model.optimizer
            rates.append((int(optimizer.iterations.numpy()),
                          float(optimizer.learning_rate.numpy())))
    result = train(config, run, resume=True, progress=False, callbacks=[Record()])
    assert result.history["epoch"] == list(range(epochs))
    assert RunFolder(run).config.train.epochs == epochs
    # Resumed at step 3 on the schedule of the epochs planned when it stopped.
    expected = MovableCosineDecay(1e-3, epochs * 3 - 3, warmup_steps=3)
    assert [step for step, _ in rates] == list(range(3, epochs * 3))
    np.testing.assert_allclose([rate for _, rate in rates],
                               [float(expected(step)) for step, _ in rates], rtol=1e-5)


@pytest.mark.slow
def test_train_py_on_the_demo_data_writes_every_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train_main(["--output", "runs/demo", "--epochs", "2", "--steps-per-epoch", "2",
                       "--batch-size", "2", "--patch-size", "64", "--depth", "2",
                       "--base-filters", "8", "--quiet"])
    assert code == 0
    assert (tmp_path / "data" / "demo" / "images").is_dir()  # generated on first use
    run = tmp_path / "runs" / "demo"
    for name in ["config.yaml", "split.json", "model.keras", "history.csv",
                 "training_curves.png", "metrics.json", "checkpoint/epoch-0002.weights.h5",
                 "checkpoint/epoch-0002.json"]:
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
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--attention", "cbma"])
    assert exit_info.value.code == 2
    assert "--attention: invalid choice: 'cbma'" in capsys.readouterr().err
    assert train_main(["--monitor", "loss"]) == 2
    assert "monitor 'loss' must be a validation metric" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--no-such-option"])


def test_resume_refuses_a_config_file_instead_of_ignoring_it(tmp_path, capsys):
    run = tmp_path / "run"
    make_untrained_run(run)
    other = tmp_path / "other.yaml"
    save_yaml(RunConfig(train=TrainConfig(epochs=3)), other)
    code = train_main(["--output", str(run), "--resume", "--config", str(other)])
    error = capsys.readouterr().err
    assert code == 2
    assert f"--config {other} cannot be used with --resume of the run in {run}" in error


class _FakeModel:
    """Records which epochs were saved as the best model."""

    def __init__(self):
        self.saved = []
        self.epoch = None

    def save(self, path):
        Path(path).write_text(str(self.epoch))
        self.saved.append(self.epoch)


@pytest.mark.parametrize("monitor, values, saved", [
    ("val_loss", [0.5, 0.7, 0.3, 0.4, 0.3], [0, 2]),            # lower is better
    ("val_mean_dice", [0.5, 0.7, 0.3, 0.4, 0.7], [0, 1]),       # higher is better
])
def test_best_model_follows_the_monitor_direction(tmp_path, monitor, values, saved):
    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", monitor)
    model = _FakeModel()
    checkpoint.set_model(model)
    for epoch, value in enumerate(values):
        model.epoch = epoch
        checkpoint.on_epoch_end(epoch, {monitor: value})
    assert model.saved == saved
    assert (tmp_path / "model.keras").read_text() == str(saved[-1])
    # resuming with the best value so far keeps the direction
    history = tmp_path / "history.csv"
    history.write_text("epoch," + monitor + "\n" +
                       "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    run = RunFolder(tmp_path)
    assert run.best_score(monitor) == (min(values) if monitor == "val_loss" else max(values))


@pytest.mark.slow
def test_monitor_val_loss_picks_the_lowest_loss(tmp_path):
    # In float32: float16 on a CPU runs slowly, and test_mixed_precision_run checks that
    # train() puts the policy back.
    data = generate_demo(tmp_path / "demo", count=4)
    config = _config(data, epochs=3, steps=2, monitor="val_loss", early_stopping_patience=1,
                     lr_schedule="plateau")
    result = train(config, tmp_path / "run", progress=False)
    losses = result.history["val_loss"]
    assert result.metrics["best_epoch"] == int(np.argmin(losses)) + 1
    assert result.metrics["monitor"] == "val_loss"


def test_unknown_monitor_is_refused_before_anything_is_written(tmp_path):
    data = generate_demo(tmp_path / "demo", count=3)
    config = _config(data, epochs=1, steps=1, monitor="val_dice_membrane")
    with pytest.raises(ValueError, match="monitor 'val_dice_nucleus' is not logged; choose one "
                                         "of val_loss, val_iou_membrane"):
        train(dataclasses.replace(config, train=dataclasses.replace(
            config.train, monitor="val_dice_nucleus")), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="val_dice_foreground"):
        train(dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                   class_names=None)),
              tmp_path / "run2", progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_mixed_precision_run(tmp_path):
    data = generate_demo(tmp_path / "demo", count=4)
    config = _config(data, epochs=1, steps=2, mixed_precision=True)
    assert keras.config.dtype_policy().name == "float32"
    result = train(config, tmp_path / "run", progress=False)
    # train() must put the global policy back itself (the conftest reset runs only later)
    assert keras.config.dtype_policy().name == "float32"
    assert np.isfinite(result.history["loss"]).all()
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True,
                                    compile=False)
    assert model.get_layer("decoder_stage0_conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    data = generate_demo(tmp_path / "demo", count=4)
    completed = run_on_two_cpus(f"""
        from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
        from unet_cbam.training import make_strategy, train
        config = RunConfig(
            model=ModelConfig(num_classes=1, depth=2, base_filters=8),
            data=DataConfig(data={str(data)!r}, patch_size=32, val_fraction=0.5),
            train=TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, strategy="mirrored"))
        print("replicas", make_strategy(config.train).num_replicas_in_sync)

        import keras
        import numpy as np

        class Check(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                strategy = self.model.distribute_strategy
                for weight in self.model.non_trainable_weights:
                    copies = strategy.experimental_local_results(weight.value)
                    assert len(copies) == 2
                    np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
                print("replica statistics equal", len(self.model.non_trainable_weights))
        result = train(config, {str(tmp_path / "run")!r}, progress=False, callbacks=[Check()])
        print("loss", result.history["loss"][0])
    """)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "replicas 2" in completed.stdout
    assert "replica statistics equal" in completed.stdout  # batch norm's, averaged
    assert (tmp_path / "run" / "model.keras").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--encoder", "foo"], "unknown encoder 'foo'"),
    (["--patch-size", "30"], "patch_size 30 is not divisible by 4"),
])
@pytest.mark.slow
def test_a_failed_start_writes_nothing_and_the_fix_can_run_there(tmp_path, capsys, flags,
                                                                 message):
    data = generate_demo(tmp_path / "demo", count=3)
    run = tmp_path / "run"
    base = ["--data", str(data), "--output", str(run), "--epochs", "1", "--steps-per-epoch",
            "1", "--batch-size", "2", "--patch-size", "32", "--depth", "2", "--base-filters",
            "4", "--quiet"]
    assert train_main(base + flags) == 2
    assert message in capsys.readouterr().err
    assert not run.exists() or not any(run.iterdir())
    assert train_main(base) == 0                       # the fix runs in the same folder


def test_a_misspelled_augmentation_is_refused_before_anything_is_written(tmp_path, capsys):
    data = generate_demo(tmp_path / "demo", count=3)
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  augmentations:\n    - HorizontalFlip: {p: 0.5}\n"
                      "    - RandomBrightnesContrast: {p: 0.5}\n")
    run = tmp_path / "run"
    assert train_main(["--data", str(data), "--config", str(config), "--output",
                       str(run)]) == 2
    assert "albumentations has no transform 'RandomBrightnesContrast'" in \
        capsys.readouterr().err
    assert not run.exists()


@pytest.mark.slow
def test_a_run_that_never_completed_an_epoch_is_replaced_even_on_resume(tmp_path):
    data = generate_demo(tmp_path / "demo", count=4)
    run = tmp_path / "run"
    config = _config(data, epochs=2, steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, progress=False, callbacks=[Interrupt(epoch=0)])
    assert (run / "config.yaml").is_file() and not RunFolder(run).checkpoints()
    fixed = dataclasses.replace(config, model=dataclasses.replace(config.model, depth=2))
    result = train(fixed, run, resume=True, progress=False)   # not "keeps its model"
    assert result.history["epoch"] == [0, 1]
    assert load_yaml(RunConfig, run / "config.yaml").model.depth == 2


@pytest.mark.slow
def test_an_error_inside_a_tf_data_worker_ends_the_process_with_one_line(tmp_path):
    data = generate_demo(tmp_path / "demo", count=3)
    config = tmp_path / "c.yaml"
    # valid to build, but changes the patch size inside the pipeline: the worker fails
    config.write_text("data:\n  augmentations:\n    - Resize: {height: 16, width: 16}\n")
    completed = subprocess.run(
        [sys.executable, "train.py", "--data", str(data), "--config", str(config),
         "--output", str(tmp_path / "run"), "--epochs", "1", "--steps-per-epoch", "2",
         "--batch-size", "2", "--patch-size", "32", "--depth", "2", "--base-filters", "4",
         "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    lines = [line for line in completed.stderr.splitlines() if "train.py: error" in line]
    assert len(lines) == 1 and "training failed" in lines[0]
    assert "Traceback" not in completed.stderr


def test_fit_leaves_its_training_iterator_for_release_pipelines_to_tear_down():
    import gc

    import tensorflow as tf
    from tensorflow.python.data.ops import iterator_ops

    from unet_cbam.training import release_pipelines

    def live() -> int:
        return sum(isinstance(o, iterator_ops.OwnedIterator) for o in gc.get_objects())

    images = tf.data.Dataset.random(seed=1).map(
        lambda seed: (tf.random.stateless_uniform((8, 8, 1), tf.stack([seed, seed])),
                      tf.zeros((8, 8, 1))), num_parallel_calls=tf.data.AUTOTUNE)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, padding="same")])
    model.compile("adam", "mse")
    gc.collect()
    before = live()
    class StopMidEpoch(keras.callbacks.Callback):  # as TimeBudget ends an overrunning epoch
        def on_train_batch_end(self, batch, logs=None):
            self.model.stop_training = batch == 1

    gc.disable()  # no collection may happen to run inside fit: the cycle is left as fit left it
    try:
        model.fit(images.batch(2).prefetch(tf.data.AUTOTUNE), epochs=2, steps_per_epoch=3,
                  callbacks=[StopMidEpoch()], verbose=0)
        assert live() == before + 1  # fit's iterator outlives it, in a reference cycle
    finally:
        gc.enable()
    release = release_pipelines()
    release.join()
    assert release.name == "release-training-pipeline" and release.daemon
    assert isinstance(release.seconds, float) and release.seconds >= 0
    assert live() == before
