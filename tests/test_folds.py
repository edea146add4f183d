"""k-fold cross-validation: the folds, --fold K, cv_metrics.json and the averaged ensemble."""

import json

import numpy as np
import pytest

from helpers import make_untrained_run, tiny_fold_config, write_pairs
from unet_cbam.cli.train import main as train_main
from unet_cbam.config import DataConfig, InferenceConfig, ModelConfig, RunConfig, TrainConfig
from unet_cbam.data.dataset import kfold_split
from unet_cbam.data.verify import Sample
from unet_cbam.inference import ensemble_predictor
from unet_cbam.loading import load_run
from unet_cbam.predict import BatchPredictor
from unet_cbam.run import RunFolder


def _samples(count):
    return [Sample(f"s{i:02d}", None, None) for i in range(count)]


def test_folds_are_disjoint_cover_the_data_and_repeat_for_a_seed():
    samples = _samples(11)
    vals = []
    for fold in range(4):
        train, val = kfold_split(samples, 4, fold, seed=3)
        assert {s.stem for s in train} | {s.stem for s in val} == {s.stem for s in samples}
        assert not {s.stem for s in train} & {s.stem for s in val}
        assert len(val) in (2, 3)
        vals.append({s.stem for s in val})
        assert (train, val) == kfold_split(list(reversed(samples)), 4, fold, seed=3)
    assert set().union(*vals) == {s.stem for s in samples}
    assert sum(len(v) for v in vals) == len(samples)
    assert kfold_split(samples, 4, 0, seed=4) != kfold_split(samples, 4, 0, seed=3)
    with pytest.raises(ValueError, match="folds 5 is more than the 3 pairs"):
        kfold_split(_samples(3), 5, 0, seed=0)


@pytest.mark.parametrize("options, message", [
    (["--folds", "1"], "folds 1 must be >= 2"),
    (["--fold", "0"], "fold 0 needs folds"),
    (["--folds", "3", "--fold", "3"], "fold 3 must be between 0 and 2"),
])
def test_bad_fold_options_are_refused_before_training(tmp_path, capsys, options, message):
    assert train_main(["--data", str(tmp_path), "--output", str(tmp_path / "run"),
                       *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_more_folds_than_images_is_a_data_error(tmp_path, capsys):
    data = write_pairs(tmp_path / "data", count=3, channels=1)
    assert train_main(["--data", str(data), "--output", str(tmp_path / "run"),
                       "--folds", "4", "--input-channels", "1", "--quiet"]) == 2
    assert "folds 4 is more than the 3 pairs" in capsys.readouterr().err
    assert not (tmp_path / "run" / "fold_0" / "config.yaml").exists()


@pytest.mark.slow
def test_fold_k_alone_then_the_rest_give_cv_metrics(tmp_path):
    from unet_cbam.folds import train_folds

    data = write_pairs(tmp_path / "data", count=4, size=(32, 32), channels=1)
    config = tiny_fold_config(data, folds=2, fold=1)
    run = RunFolder(tmp_path / "cv")
    train_folds(config, run, progress=False)
    assert [fold.path.name for fold in run.folds()] == ["fold_1"]
    assert not run.cv_metrics_path.exists()
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) 0 of 2 have no model.keras"):
        load_run(run.path)
    config.train.fold = 0
    train_folds(config, run, progress=False)
    splits = [fold.read_split() for fold in run.folds()]
    assert sorted(splits[0]["val"] + splits[1]["val"]) == ["p0", "p1", "p2", "p3"]
    assert set(splits[0]["val"]) == set(splits[1]["train"])
    summary = json.loads(run.cv_metrics_path.read_text())
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2
    dice = [m["mean_dice"] for m in summary["per_fold"]]
    assert summary["mean_dice"] == pytest.approx(np.mean(dice))
    assert summary["mean_dice_std"] == pytest.approx(np.std(dice))
    assert len(load_run(run.path).members) == 2
    with pytest.raises(FileExistsError, match="fold_0: already holds a run"):
        train_folds(config, run, progress=False)  # no --resume: nothing is overwritten


def test_ensemble_averages_the_members_exactly(tmp_path):
    tiles = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    members = [lambda t: t * 0.2, lambda t: t * 0.6, lambda t: np.ones_like(t)]
    np.testing.assert_allclose(ensemble_predictor(members)(tiles),
                               (tiles * 0.8 + 1) / 3, rtol=1e-6)
    single = members[0]
    assert ensemble_predictor([single]) is single

    for index, seed in enumerate((1, 2)):
        import keras
        keras.utils.set_random_seed(seed)
        make_untrained_run(tmp_path / "cv" / f"fold_{index}", channels=1)
    run = load_run(tmp_path / "cv")
    assert len(run.members) == 2 and run.path == tmp_path / "cv"
    image = np.random.default_rng(1).random((40, 48, 1), dtype=np.float32)
    inference = InferenceConfig(tile_size=32)
    together = BatchPredictor(run, inference).predict_image(image)
    alone = [BatchPredictor(load_run(tmp_path / "cv" / f"fold_{i}"), inference)
             .predict_image(image) for i in range(2)]
    assert not np.allclose(alone[0], alone[1])
    np.testing.assert_allclose(together, (alone[0] + alone[1]) / 2, atol=1e-6)


def test_folds_that_differ_in_preprocessing_are_not_averaged(tmp_path):
    make_untrained_run(tmp_path / "cv" / "fold_0", channels=1)
    make_untrained_run(tmp_path / "cv" / "fold_1", channels=1,
                       normalization={"mode": "percentile", "low": [0.0], "high": [10.0]})
    with pytest.raises(ValueError, match="fold_1: its normalization differs"):
        load_run(tmp_path / "cv")


@pytest.mark.slow
def test_a_time_budgeted_cross_validation_measures_the_step_time_once(tmp_path, monkeypatch):
    """Folds share the first fold's measurement: the same model and plan step alike, and
    each fold's share of the budget goes to training instead of measuring again."""
    import unet_cbam.training as training
    from unet_cbam.folds import train_folds

    calls = []

    def measured(step):
        step()
        calls.append(1)
        return 0.5, 1.5

    monkeypatch.setattr(training, "measure_step_seconds", measured)
    data = write_pairs(tmp_path / "data", count=4, size=(32, 32), channels=1)
    config = RunConfig(
        model=ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1),
        data=DataConfig(data=str(data), augmentation="none", scale=1.0),
        train=TrainConfig(time_budget="6s", steps_per_epoch=2, batch_size=2, warmup_epochs=0,
                          folds=2))
    run = RunFolder(tmp_path / "cv")
    train_folds(config, run, progress=False)
    assert len(calls) == 1
    first, second = (fold.config.plan["epochs"]["reason"] for fold in run.folds())
    assert ": 0.5 s a step (measured after warm-up) and " in first
    assert ": 0.5 s a step (measured after warm-up in fold_0) and " in second
    # The 6 s cover both folds: each got a share of what was left when it started.
    shares = [fold.config.train.time_budget for fold in run.folds()]
    assert shares[0] <= 3.0 and sum(shares) <= 6.0
    assert run.read_cv_metrics()["wall_seconds"]["budget"] == 6.0
