"""The fingerprint, the automatic configuration (plan) and the normalisations."""

import json

import cv2
import numpy as np
import pytest
import tifffile

from unet_cbam.cli.fingerprint import main as fingerprint_main
from unet_cbam.config import (
    DataConfig,
    InferenceConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from unet_cbam.data.classes import binary_threshold_from_histogram, choose_binary_threshold
from unet_cbam.data.io import ImageReadError, Normalization, preprocess
from unet_cbam.data.verify import DataError, find_pairs
from unet_cbam.explore import inspect_data
from unet_cbam.plan import (
    BATCH_PIXELS,
    MAX_PATCH_SIDE,
    MIN_BATCH,
    RARE_OVERSAMPLING,
    choose_batch_size,
    choose_normalization,
    choose_patch_size,
    plan_run,
)

BACKGROUND, NUCLEUS = 100, 1000


def _nuclei(root, count=4, size=(64, 64), mask_format="png"):
    """16-bit images: background 100, an 8x8 and a 4x4 square of 1000 (two objects)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for index in range(count):
        image = np.full(size, BACKGROUND, np.uint16)
        mask = np.zeros(size, np.uint16)
        image[8:16, 8:16] = NUCLEUS
        mask[8:16, 8:16] = 1 + 2 * index  # instance labels
        image[40:44, 30:34] = NUCLEUS
        mask[40:44, 30:34] = 2 + 2 * index
        tifffile.imwrite(root / "images" / f"n{index}.tif", image)
        if mask_format == "png":
            cv2.imwrite(str(root / "masks" / f"n{index}.png"), mask)
        else:
            tifffile.imwrite(root / "masks" / f"n{index}.tif", mask)
    return root


def _fingerprint(root, channels=1, num_classes=1, **data):
    overview = inspect_data(DataConfig(data=str(root), **data),
                            ModelConfig(input_channels=channels, num_classes=num_classes))
    return overview.fingerprint, overview


def test_fingerprint_statistics_are_exact_on_known_images(tmp_path):
    fingerprint, _ = _fingerprint(_nuclei(tmp_path / "data"))
    assert fingerprint["pairs"] == 4
    assert fingerprint["image_size"] == {"min": [64, 64], "median": [64.0, 64.0],
                                         "max": [64, 64]}
    assert fingerprint["channels"] == [1] and fingerprint["dtype"] == ["uint16"]
    assert fingerprint["bit_depth"] == 16
    everything = fingerprint["intensity"]["all"]
    assert everything["pixels"] == 4 * 64 * 64  # under the per-image budget: every pixel
    foreground_share = 80 / 4096  # 1.95 %: the 99.5th percentile is a nucleus
    assert everything["p0.5"] == [BACKGROUND] and everything["p50"] == [BACKGROUND]
    assert everything["p99.5"] == [NUCLEUS]
    assert everything["mean"][0] == pytest.approx(
        BACKGROUND + (NUCLEUS - BACKGROUND) * foreground_share)
    foreground = fingerprint["intensity"]["foreground"]
    assert foreground["pixels"] == 4 * 80
    assert foreground["mean"] == [NUCLEUS] and foreground["std"] == [0.0]
    assert fingerprint["class_frequency"]["foreground"] == pytest.approx(foreground_share)
    assert fingerprint["objects"]["foreground"] == {
        "count": 8, "per_image": 2.0, "median_area": 40.0, "p5_area": 16.0}
    assert fingerprint["mask_formats"] == {"png 16-bit": 4}
    assert fingerprint["binary_threshold"]["value"] == 0
    json.dumps(fingerprint)  # JSON-ready


def test_pixel_sampling_is_bounded(tmp_path, monkeypatch):
    import unet_cbam.data.verify as verify
    monkeypatch.setattr(verify, "PIXEL_SAMPLE_BUDGET", 4 * 500)
    fingerprint, _ = _fingerprint(_nuclei(tmp_path / "data"))
    assert fingerprint["intensity"]["all"]["pixels"] == 4 * 500
    assert fingerprint["intensity"]["foreground"]["pixels"] == 4 * 80


def test_narrow_16_bit_data_gets_percentile_normalisation(tmp_path):
    fingerprint, _ = _fingerprint(_nuclei(tmp_path / "data"))
    config = plan_run(RunConfig(model=ModelConfig(num_classes=1, input_channels=1)), fingerprint)
    normalization = config.data.normalization
    assert normalization == Normalization("percentile", (BACKGROUND,), (NUCLEUS,))
    assert config.plan["normalization"]["value"] == normalization.to_config()
    assert "16-bit range" in config.plan["normalization"]["reason"]
    raw = np.array([[0, 100, 550], [1000, 5000, 65535]], np.uint16)
    np.testing.assert_allclose(preprocess(raw, 1, normalization=normalization)[..., 0],
                               [[0, 0, 0.5], [1, 1, 1]], atol=1e-7)


def test_full_range_8_bit_data_keeps_bit_depth_scaling():
    fingerprint = {"intensity": {"all": {"p0.5": [3.0], "p99.5": [250.0]},
                                 "foreground": {"pixels": 0}},
                   "dtype": ["uint8"], "bit_depth": 8}
    normalization, reason = choose_normalization("auto", fingerprint)
    assert normalization == {"mode": "bitdepth"} and "97% of the 8-bit range" in reason


def test_float_data_gets_percentiles_and_bitdepth_refuses_out_of_range_floats():
    stats = {"p0.5": [-2.0], "p99.5": [6.0], "min": [-3.0], "max": [9.0], "mean": [1.0],
             "std": [2.0]}
    fingerprint = {"intensity": {"all": stats, "foreground": {"pixels": 0}},
                   "dtype": ["float32"], "bit_depth": 32}
    normalization, reason = choose_normalization("auto", fingerprint)
    assert normalization == {"mode": "percentile", "low": [-2.0], "high": [6.0]}
    assert reason.startswith("percentile: float images")
    with pytest.raises(ValueError, match="float images hold values from -3 to 9"):
        choose_normalization("bitdepth", fingerprint)
    zscore, _ = choose_normalization("zscore", fingerprint)
    assert zscore["mean"] == pytest.approx(3 / 8) and zscore["std"] == pytest.approx(2 / 8)
    normalization = Normalization.from_config(zscore)
    raw = np.array([[-2.0, 1.0, 6.0]], np.float32)
    # (clip(x) - mean) / std in raw units: (x - 1) / 2
    np.testing.assert_allclose(preprocess(raw, 1, normalization=normalization)[..., 0],
                               [[-1.5, 0.0, 2.5]], atol=1e-6)
    unit = preprocess(raw, 1, normalization=normalization, standardize=False)
    np.testing.assert_allclose(unit[..., 0], [[0.0, 3 / 8, 1.0]], atol=1e-7)


def test_normalization_round_trips_and_checks_its_values():
    value = {"mode": "zscore", "low": [1.0, 2.0, 3.0], "high": [5.0, 6.0, 7.0],
             "mean": 0.25, "std": 0.5}
    assert Normalization.from_config(value).to_config() == value
    assert Normalization.from_config(None) == Normalization()  # older runs: bit depth
    with pytest.raises(ValueError, match="every high must be above its low"):
        Normalization.from_config({"mode": "percentile", "low": [5.0], "high": [5.0]})
    with pytest.raises(ValueError, match="'minmax' is not one of"):
        Normalization.from_config({"mode": "minmax"})
    three = Normalization.from_config(value)
    with pytest.raises(ImageReadError, match="image.png: image has 1 channel"):
        three.to_unit(np.zeros((4, 4), np.uint8), "image.png")


def test_normalize_option_is_checked_and_round_trips():
    data = from_dict(DataConfig, {"normalize": "percentile", "binary_threshold": "auto"})
    assert from_dict(DataConfig, to_dict(data)) == data
    with pytest.raises(ValueError, match="normalize: 'minmax' is not one of"):
        from_dict(DataConfig, {"normalize": "minmax"})
    with pytest.raises(ValueError, match="binary_threshold"):
        from_dict(DataConfig, {"binary_threshold": "half"})


def _jpeg_masks(root, count=3):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        mask = np.zeros((64, 64), np.uint8)
        cv2.circle(mask, (20 + 5 * index, 30), 12, 255, -1)
        cv2.imwrite(str(root / "images" / f"j{index}.png"),
                    rng.integers(0, 256, (64, 64), dtype=np.uint8))
        cv2.imwrite(str(root / "masks" / f"j{index}.jpg"), mask,
                    [cv2.IMWRITE_JPEG_QUALITY, 60])
    return root


def test_jpeg_masks_are_thresholded_between_their_modes(tmp_path):
    root = _jpeg_masks(tmp_path / "data")
    samples, _ = find_pairs(root / "images", root / "masks")
    raw = cv2.imread(str(samples[0].mask_path), cv2.IMREAD_UNCHANGED)
    assert len(np.unique(raw)) > 2  # compression noise
    threshold, reason = choose_binary_threshold(samples)
    assert threshold == 127 and reason.startswith("JPEG masks gather around two modes, 0 and 255")
    fingerprint, overview = _fingerprint(root)
    assert fingerprint["binary_threshold"]["value"] == 127
    assert not any("more than two values" in p for p in overview.problems)  # explained instead
    config = plan_run(RunConfig(), fingerprint)
    assert config.data.binary_threshold == 127
    assert config.plan["binary_threshold"]["reason"] == reason
    # Given explicitly, the threshold is kept and no plan entry claims it.
    given, _ = _fingerprint(root, binary_threshold=0)
    assert given["binary_threshold"] == {"value": 0, "reason": "given"}
    assert "binary_threshold" not in (plan_run(RunConfig(), given).plan or {})


def test_clean_masks_and_instance_labels_keep_foreground_above_background():
    values = np.array([0, 255])
    assert binary_threshold_from_histogram(values, np.array([900, 100]), False)[0] == 0
    assert binary_threshold_from_histogram(np.array([1, 2]), np.array([5, 5]), False)[0] == 1
    # Instance labels 0..30: many values, mass spread over them: above the background.
    labels = np.arange(31)
    counts = np.r_[5000, np.full(30, 100)]
    threshold, reason = binary_threshold_from_histogram(labels, counts, False, 65535)
    assert threshold == 0 and "instance labels" in reason
    # Three labels with a tiny object: still instance labels, never split at the middle.
    assert binary_threshold_from_histogram(np.array([0, 1, 2]), np.array([9000, 3, 997]),
                                           False)[0] == 0
    # A resampled 0/255 PNG: two modes with a little noise between them.
    noisy = np.array([0, 1, 3, 128, 252, 255])
    threshold, reason = binary_threshold_from_histogram(
        noisy, np.array([7000, 20, 10, 5, 15, 2950]), False)
    assert threshold == 127 and reason.startswith("6 mask values gather around two modes")


def test_patch_and_batch_sizes_follow_the_median_image():
    def fingerprint(height, width):
        return {"image_size": {"median": [height, width]}}
    patch, reason = choose_patch_size(fingerprint(100, 90), 16)
    assert patch == 80 and "shorter side" in reason  # small images: no huge patches
    patch, _ = choose_patch_size(fingerprint(4000, 6000), 16)
    assert patch == MAX_PATCH_SIDE // 16 * 16 == 352  # huge images: not tiny patches
    assert patch * patch * MIN_BATCH <= BATCH_PIXELS
    assert choose_patch_size(fingerprint(10, 10), 16)[0] == 16  # at least the divisor
    assert choose_batch_size(352)[0] == 4 and choose_batch_size(128)[0] == 32
    assert choose_batch_size(256)[0] == 8


def test_plan_keeps_explicit_values_and_oversamples_rare_classes(tmp_path):
    fingerprint, _ = _fingerprint(_nuclei(tmp_path / "data"))
    fingerprint["class_frequency"] = {"background": 0.995, "foreground": 0.005}
    planned = plan_run(RunConfig(model=ModelConfig(num_classes=1, input_channels=1)), fingerprint)
    assert planned.data.foreground_oversampling == RARE_OVERSAMPLING
    assert planned.data.patch_size == 64 and planned.train.batch_size == 32
    assert set(planned.plan) == {"binary_threshold", "normalization", "patch_size",
                                 "batch_size", "foreground_oversampling", "class_sampling",
                                 "scale", "tune_on"}
    assert planned.data.class_sampling == {"foreground": 1.0}
    assert planned.plan["class_sampling"]["reason"] == "one foreground class"
    assert planned.train.tune_on == "foreground"
    assert planned.plan["tune_on"]["reason"].startswith("foreground is the rarer class (0.5%")
    # Thin background membranes between large cells (ISBI-like): judged on the background.
    membranes = {**fingerprint, "class_frequency": {"background": 0.22, "foreground": 0.78}}
    assert plan_run(RunConfig(model=ModelConfig(num_classes=1, input_channels=1)), membranes
                    ).train.tune_on == "background"
    given = plan_run(RunConfig(train=TrainConfig(tune_on="foreground")), membranes)
    assert given.train.tune_on == "foreground" and "tune_on" not in given.plan
    with pytest.raises(ValueError, match="tune_on 'membrane' must be one of the two classes"):
        plan_run(RunConfig(train=TrainConfig(tune_on="membrane")), membranes)
    three = {**fingerprint, "class_frequency": {"background": 0.5, "a": 0.3, "b": 0.2}}
    assert "tune_on" not in plan_run(RunConfig(), three).plan
    explicit = RunConfig(model=ModelConfig(num_classes=1, input_channels=1),
                         data=DataConfig(patch_size=32, normalize="bitdepth",
                                         foreground_oversampling=0.1),
                         train=TrainConfig(batch_size=2))
    kept = plan_run(explicit, fingerprint)
    assert (kept.data.patch_size, kept.train.batch_size, kept.data.foreground_oversampling) \
        == (32, 2, 0.1)
    assert kept.data.normalization == Normalization("bitdepth")
    assert kept.plan["normalization"]["reason"] == "asked for"
    frozen = RunConfig(data=DataConfig(normalization={"mode": "bitdepth"}))
    assert "normalization" not in (plan_run(frozen, fingerprint).plan or {})


def test_rare_classes_are_centred_on_more_often_but_not_always(tmp_path):
    fingerprint, _ = _fingerprint(_nuclei(tmp_path / "data"))
    fingerprint["class_frequency"] = {"wall": 0.5, "sky": 0.3, "window": 0.1999,
                                      "door": 0.0001, "car": 0.0}
    planned = plan_run(RunConfig(model=ModelConfig(num_classes=5, input_channels=1)),
                       fingerprint)
    weights = planned.data.class_sampling
    # 1/sqrt(share), normalised: door is 3000x rarer than sky and drawn sqrt(3000) = 55x
    # as often; car has no pixels and is never drawn; wall (label 0) is never centred on.
    raw = {"sky": 0.3 ** -0.5, "window": 0.1999 ** -0.5, "door": 0.0001 ** -0.5}
    assert weights == {name: round(value / sum(raw.values()), 4) for name, value in raw.items()}
    assert weights["door"] == 0.961 and weights["sky"] == 0.0175
    assert planned.plan["class_sampling"]["reason"].endswith(
        "door (0.01%) 96% of the centred patches, sky (30.0%) 2%")
    given = plan_run(RunConfig(model=ModelConfig(num_classes=5, input_channels=1),
                               data=DataConfig(class_sampling={"window": 1, "door": 0})),
                     fingerprint)
    assert given.data.class_sampling == {"window": 1, "door": 0}
    assert "class_sampling" not in given.plan
    with pytest.raises(ValueError, match="class_sampling names 'wall', not a foreground class"):
        plan_run(RunConfig(model=ModelConfig(num_classes=5, input_channels=1),
                           data=DataConfig(class_sampling={"wall": 1})), fingerprint)
    with pytest.raises(ValueError, match="at least one of them above 0"):
        DataConfig(class_sampling={"door": 0})


def test_fingerprint_command_prints_and_writes(tmp_path, capsys):
    root = _nuclei(tmp_path / "data")
    assert fingerprint_main([str(root), "--input-channels", "1", "--quiet",
                             "--output", str(tmp_path / "fp.json")]) == 0
    out = capsys.readouterr().out
    assert "| pixel type | uint16 |" in out and "| normalization | mode percentile" in out
    saved = json.loads((tmp_path / "fp.json").read_text())
    assert saved["plan"]["patch_size"]["value"] == 64
    assert saved["fingerprint"]["pairs"] == 4


def test_fingerprint_of_an_empty_or_unreadable_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    assert fingerprint_main([str(tmp_path / "empty"), "--quiet"]) == 2
    assert "empty/images: no images" in capsys.readouterr().err
    root = _nuclei(tmp_path / "bad", count=1)
    (root / "images" / "n0.tif").write_bytes(b"not a tiff")
    assert fingerprint_main([str(root), "--quiet", "--num-classes", "1"]) == 2
    assert "n0.tif: not a readable TIFF" in capsys.readouterr().err
    with pytest.raises(DataError):
        from unet_cbam.data.prepare import prepare_data
        prepare_data(RunConfig(data=DataConfig(data=str(tmp_path / "empty"))), progress=False)


@pytest.mark.slow
def test_training_saves_fingerprint_and_plan_and_predict_applies_the_normalisation(tmp_path):
    from unet_cbam.inference import probabilities_to_labels
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor
    from unet_cbam.run import RunFolder
    from unet_cbam.training import train

    root = _nuclei(tmp_path / "data", count=4)
    config = RunConfig(model=ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1),
                       data=DataConfig(data=str(root), val_fraction=0.25, augmentation="none"),
                       train=TrainConfig(epochs=1, steps_per_epoch=2, warmup_epochs=0))
    train(config, tmp_path / "run", progress=False)
    run = RunFolder(tmp_path / "run")
    assert run.read_fingerprint()["intensity"]["all"]["p99.5"] == [NUCLEUS]
    saved = run.config
    assert saved.data.normalization == Normalization("percentile", (BACKGROUND,), (NUCLEUS,))
    assert (saved.data.patch_size, saved.train.batch_size) == (64, 32)
    assert saved.data.binary_threshold == 0 and saved.data.foreground_oversampling == 1 / 3
    assert set(saved.plan) >= {"normalization", "patch_size", "batch_size"}

    loaded = load_run(run.path)
    raw = tifffile.imread(root / "images" / "n0.tif")
    by_hand = ((np.clip(raw, BACKGROUND, NUCLEUS) - BACKGROUND) / (NUCLEUS - BACKGROUND))
    expected = loaded.model.predict(by_hand[None, ..., None].astype(np.float32), verbose=0)[0]
    labels, probabilities = BatchPredictor(loaded, InferenceConfig(postprocess=False)
                                           ).predict_raw(raw, keep_probabilities=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, probabilities_to_labels(expected))


def test_time_budget_plans_epochs_and_steps_from_the_measured_step_time():
    from unet_cbam.plan import plan_time_budget

    config = RunConfig(train=TrainConfig(time_budget="20m"))
    planned = plan_time_budget(config, step_seconds=1.5, pass_steps=100, spent_seconds=30)
    # (1200 - 30) / 1.5 = 780 steps: 7 passes of ~100 steps -> 7 epochs of 111 steps.
    assert (planned.train.epochs, planned.train.steps_per_epoch) == (7, 111)
    assert planned.plan["epochs"]["reason"].startswith("time_budget 20m: 1.5 s a step")
    long_passes = plan_time_budget(config, step_seconds=1.5, pass_steps=600)
    assert (long_passes.train.epochs, long_passes.train.steps_per_epoch) == (5, 160)
    given = RunConfig(train=TrainConfig(time_budget="10m", steps_per_epoch=40))
    planned = plan_time_budget(given, step_seconds=0.5, pass_steps=40)
    assert (planned.train.epochs, planned.train.steps_per_epoch) == (30, 40)
    assert planned.plan["steps_per_epoch"]["reason"] == "as given"
    # The real model traces its training function again: (1200 - 30 - 45) / 1.5 = 750.
    traced = plan_time_budget(config, step_seconds=1.5, pass_steps=100, spent_seconds=30,
                              trace_seconds=45)
    assert (traced.train.epochs, traced.train.steps_per_epoch) == (7, 107)
    assert "after 30 s of preparing and measuring and 45 s to trace" in \
        traced.plan["epochs"]["reason"]
    tiny = plan_time_budget(RunConfig(train=TrainConfig(time_budget="2s")), 5.0, 100)
    assert (tiny.train.epochs, tiny.train.steps_per_epoch) == (1, 1)


def test_the_time_budget_plans_validation_and_the_final_steps_into_it():
    """The budget is the whole command's: the plan keeps the final scoring and tuning's
    share out of the epochs and counts each epoch's validation, scoring only the first
    validation batches where a whole pass would cost over a fifth of an epoch."""
    from unet_cbam.plan import plan_time_budget

    config = RunConfig(train=TrainConfig(time_budget="20m"))
    planned = plan_time_budget(config, step_seconds=1.5, pass_steps=100, spent_seconds=30,
                               validation_seconds=40, validation_batches=20, final_seconds=60)
    # (1200 - 30 - 60) / 1.5 = 740 steps -> 7 x 105; a 157.5 s epoch affords 31.5 s of
    # validation: 15 of the 20 batches (30 s); 1110 s / 187.5 s -> 5 epochs.
    assert (planned.train.epochs, planned.train.steps_per_epoch) == (5, 105)
    assert planned.train.validation_steps == planned.plan["validation_steps"]["value"] == 15
    assert planned.plan["final_seconds"]["value"] == 60
    reason = planned.plan["epochs"]["reason"]
    assert "1.5 s a step (measured after warm-up) and 30 s of validation an epoch" in reason
    assert "with 60 s kept for the final scoring, tuning and save: 5 x 105" in reason
    cheap = plan_time_budget(config, step_seconds=1.5, pass_steps=100, spent_seconds=30,
                             validation_seconds=10, validation_batches=20, final_seconds=60)
    assert cheap.train.validation_steps is None  # all of them: 10 s is under 31.5 s
    assert "all of them after each epoch" in cheap.plan["validation_steps"]["reason"]
    assert cheap.train.epochs == 1110 // (157.5 + 10)


def test_the_end_of_a_resampled_run_is_estimated_at_the_training_resolution():
    """Tuning predicts the validation images at the resolution the model trained at: the
    plan's final_seconds counts their resampled pixels, not their native ones."""
    from types import SimpleNamespace

    from unet_cbam.data.dataset import PairSource
    from unet_cbam.data.io import MaskCodec
    from unet_cbam.data.verify import Sample
    from unet_cbam.training import SAVE_SECONDS, TUNING_OVERHEAD, _Session

    samples = [Sample(f"s{i}", None, None) for i in range(3)]
    native = PairSource(samples, [(400, 600)] * 3, MaskCodec("binary", 1), 3, None)
    config = RunConfig(data=DataConfig(patch_size=64), train=TrainConfig(batch_size=4))
    for source, pixels in ((native, 400 * 600), (native.rescaled(0.25), 100 * 150)):
        session = SimpleNamespace(config=config, data=SimpleNamespace(val=source),
                                  validation_batches=10)
        rate = 4 * 64 * 64 / 0.5  # pixels a second at 0.5 s a batch
        assert _Session.final_seconds(session, 0.5) == pytest.approx(
            10 * 0.5 + TUNING_OVERHEAD * 3 * pixels / rate + SAVE_SECONDS)


@pytest.mark.parametrize("value", ["soon", "20 minutes", "0s", "1x"])
def test_bad_time_budget_is_refused_before_training(tmp_path, capsys, value):
    from unet_cbam.cli.train import main as train_main

    code = train_main(["--data", str(tmp_path), "--time-budget", value,
                       "--output", str(tmp_path / "run")])
    assert code == 2
    assert f"time_budget {value!r}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_time_budgeted_run_saves_its_planned_epochs(tmp_path):
    from unet_cbam.run import RunFolder
    from unet_cbam.training import train

    root = _nuclei(tmp_path / "data", count=4)
    config = RunConfig(model=ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1),
                       data=DataConfig(data=str(root), val_fraction=0.25, augmentation="none"),
                       train=TrainConfig(time_budget="8s", batch_size=4, warmup_epochs=0))
    result = train(config, tmp_path / "run", progress=False)
    saved = RunFolder(tmp_path / "run").config
    assert saved.plan["epochs"]["value"] == saved.train.epochs
    assert saved.plan["steps_per_epoch"]["value"] == saved.train.steps_per_epoch
    assert saved.train.epochs * saved.train.steps_per_epoch >= 1
    # The pacer's re-plan (if any) is saved: the epochs trained are the config's.
    assert len(result.history["loss"]) == saved.train.epochs
    # Validation and the final steps are planned into the budget, and the wall time kept.
    assert "s of validation an epoch" in saved.plan["epochs"]["reason"]
    assert "validation_steps" in saved.plan and saved.plan["final_seconds"]["value"] > 0
    wall = RunFolder(tmp_path / "run").read_metrics()["wall_seconds"]
    assert wall["budget"] == 8.0 and wall["final_planned"] == saved.plan["final_seconds"]["value"]
    assert wall["total"] >= wall["training_and_validation"] + wall["final_scores_tuning_and_saves"]
    steps = wall["final_steps"]  # the end of the run, step by step, adding up to its whole
    assert list(steps) == ["load", "scores", "tuning_predictions", "tuning", "saves"]
    assert abs(sum(steps.values()) - wall["final_scores_tuning_and_saves"]) <= 0.1
    # fit's leftover pipeline is torn down off the budget's path, and how long it took kept
    assert wall["pipeline_release"] is None or wall["pipeline_release"] >= 0
