"""The training resolution: structure widths, the planned scale, resampled training and
prediction at the image's own size."""

import cv2
import numpy as np
import pytest

from helpers import make_untrained_run
from unet_cbam.config import DataConfig, InferenceConfig, ModelConfig, RunConfig, TrainConfig
from unet_cbam.data.io import resize_image, scaled_size
from unet_cbam.explore import inspect_data
from unet_cbam.inference import resampled_predict, sliding_window_predict
from unet_cbam.loading import load_run
from unet_cbam.plan import TARGET_PASSES, choose_scale, plan_run, plan_scale
from unet_cbam.predict import BatchPredictor


def _bars(root, count=3, size=(64, 64), bar=6):
    """Gray images with a vertical bar ``bar`` pixels wide in the middle (the foreground)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    left = (size[1] - bar) // 2
    for index in range(count):
        mask = np.zeros(size, np.uint8)
        mask[:, left:left + bar] = 255
        image = np.where(mask > 0, 200, 40).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"b{index}.png"), image)
        cv2.imwrite(str(root / "masks" / f"b{index}.png"), mask)
    return root


def _blobs(root, count=4, size=(256, 256), radius=70):
    """Gray images with one large disc each (the foreground)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        mask = np.zeros(size, np.uint8)
        centre = (int(rng.integers(radius, size[1] - radius)),
                  int(rng.integers(radius, size[0] - radius)))
        cv2.circle(mask, centre, radius, 255, -1)
        noise = rng.integers(0, 40, size)
        image = np.clip(np.where(mask > 0, 180, 60) + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"d{index}.png"), image)
        cv2.imwrite(str(root / "masks" / f"d{index}.png"), mask)
    return root


def test_structure_widths_measure_how_thick_each_class_is(tmp_path):
    overview = inspect_data(DataConfig(data=str(_bars(tmp_path / "data"))),
                            ModelConfig(num_classes=1, input_channels=1))
    widths = overview.fingerprint["structure_width"]
    # The bar's pixels lie 0.5, 1.5 and 2.5 pixels from its edges: median 1.5, width 4 x 1.5.
    assert widths["foreground"] == 6.0
    # Each background side is 29 columns: distances 0.5 ... 28.5, median 14.5 (sampled).
    assert widths["background"] == pytest.approx(58.0, abs=3.0)
    assert overview.fingerprint["version"] == 2


FINGERPRINT = {"image_size": {"median": [600.0, 500.0]},
               "structure_width": {"background": 400.0, "foreground": 160.0}}


def test_scale_trades_resolution_for_passes_but_keeps_structures_wide():
    assert choose_scale(FINGERPRINT, 16, TARGET_PASSES)[0] == 1.0  # enough passes
    scale, reason = choose_scale(FINGERPRINT, 16, TARGET_PASSES / 16)
    assert scale == 0.25 and f"resampled by 0.25 it affords {TARGET_PASSES}" in reason
    # Fewer passes still: the foreground's 160 px must stay 20 px wide (0.125: 0.15) ...
    scale, reason = choose_scale(FINGERPRINT, 16, TARGET_PASSES / 400)
    assert scale == 0.15 and "not lower: foreground structures" in reason
    narrow = {**FINGERPRINT, "structure_width": {"background": 400.0, "foreground": 80.0}}
    assert choose_scale(narrow, 16, TARGET_PASSES / 400)[0] == 0.25
    # ... and the median image's 500 px side 4 x 16 = 64 px (0.128, rounded up).
    wide = {**FINGERPRINT, "structure_width": {"background": 400.0, "foreground": 300.0}}
    assert choose_scale(wide, 16, TARGET_PASSES / 400)[0] == 0.15
    assert choose_scale(FINGERPRINT, 16, TARGET_PASSES / 10)[0] == 0.35  # rounded up
    thin = {**FINGERPRINT, "structure_width": {"background": 400.0, "foreground": 19.0}}
    scale, reason = choose_scale(thin, 16, 0.5)
    assert scale == 1.0 and "must stay at least 20 px wide" in reason
    nuclei = {**FINGERPRINT, "structure_width": {"background": 400.0, "foreground": 24.8}}
    assert choose_scale(nuclei, 16, 12.9) == (0.85, (  # 0.806 rounds up to 0.85
        "the budget affords 12.9 passes over the training pixels at full resolution (at least "
        f"{TARGET_PASSES} wanted): resampled by 0.85 it affords 18; not lower: foreground "
        "structures (24.8 px wide) must stay at least 20 px wide, the median image's side 64"))
    assert choose_scale(nuclei, 16, 59.0)[0] == 1.0  # 0.96 wanted, rounded up to 1
    old = {"image_size": FINGERPRINT["image_size"]}
    assert choose_scale(old, 16, 0.5) == (1.0, "the fingerprint has no structure widths "
                                                "(written by an older version)")


def test_plan_scale_replans_the_planned_patch_and_batch_only():
    fingerprint = {**FINGERPRINT, "class_frequency": {"background": 0.8, "foreground": 0.2},
                   "intensity": {"all": {"p0.5": [0.0], "p99.5": [255.0]},
                                 "foreground": {"pixels": 0}},
                   "dtype": ["uint8"], "bit_depth": 8}
    timed = RunConfig(model=ModelConfig(num_classes=1, input_channels=1),
                      train=TrainConfig(time_budget="5m"))
    planned = plan_run(timed, fingerprint)
    assert planned.data.scale is None and "scale" not in planned.plan  # open until measured
    assert (planned.data.patch_size, planned.train.batch_size) == (352, 4)
    scaled = plan_scale(planned, fingerprint, TARGET_PASSES / 16)
    assert scaled.data.scale == 0.25 and scaled.plan["scale"]["value"] == 0.25
    assert (scaled.data.patch_size, scaled.train.batch_size) == (112, 32)  # 125 px: 112
    given = RunConfig(model=ModelConfig(num_classes=1, input_channels=1),
                      data=DataConfig(patch_size=64),
                      train=TrainConfig(time_budget="5m", batch_size=2))
    kept = plan_scale(plan_run(given, fingerprint), fingerprint, TARGET_PASSES / 16)
    assert (kept.data.scale, kept.data.patch_size, kept.train.batch_size) == (0.25, 64, 2)
    untimed = plan_run(RunConfig(model=ModelConfig(num_classes=1, input_channels=1)), fingerprint)
    assert untimed.data.scale == 1.0 and untimed.plan["scale"]["reason"].startswith(
        "no time budget")
    explicit = plan_run(RunConfig(model=ModelConfig(num_classes=1, input_channels=1),
                                  data=DataConfig(scale=0.5)), fingerprint)
    assert "scale" not in explicit.plan and explicit.data.patch_size == 240  # 250 px: 240


def test_resampled_prediction_comes_back_at_the_image_size():
    height, width = 50, 70
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None].repeat(height, 0)

    def predictor(tiles):
        return tiles[..., :1]
    tiling = {"tile_size": 32, "overlap": 0.25, "batch_size": 2, "divisor": 4}
    same = resampled_predict(ramp, predictor, scale=1.0, **tiling)
    np.testing.assert_array_equal(same, sliding_window_predict(ramp, predictor, **tiling))
    half = resampled_predict(ramp, predictor, scale=0.5, **tiling)
    assert half.shape == (height, width, 1)
    inner = slice(2, -2)  # bilinear interpolation reproduces a ramp away from the borders
    np.testing.assert_allclose(half[:, inner], ramp[:, inner], atol=0.01)
    assert scaled_size(50, 70, 0.5) == (25, 35) and scaled_size(3, 3, 0.1) == (1, 1)
    assert resize_image(np.zeros((8, 8, 6), np.float32), 4, 4).shape == (4, 4, 6)


def test_members_at_different_resolutions_are_averaged_at_the_image_size(tmp_path):
    import keras
    for index, scale in enumerate((1.0, 0.5)):
        keras.utils.set_random_seed(index)
        make_untrained_run(tmp_path / "cv" / f"fold_{index}", channels=1, scale=scale)
    run = load_run(tmp_path / "cv")
    assert run.scales == [1.0, 0.5]
    image = np.random.default_rng(1).random((40, 48, 1), dtype=np.float32)
    # float32: compared with the float32 model's own forward pass below
    inference = InferenceConfig(tile_size=32, postprocess=False, precision="float32")
    together = BatchPredictor(run, inference).predict_image(image)
    alone = [BatchPredictor(load_run(tmp_path / "cv" / f"fold_{i}"), inference)
             .predict_image(image) for i in range(2)]
    small = resize_image(image, 20, 24)
    by_hand = load_run(tmp_path / "cv" / "fold_1").model.predict(small[None], verbose=0)[0]
    np.testing.assert_allclose(alone[1], resize_image(by_hand, 40, 48), atol=1e-5)
    np.testing.assert_allclose(together, (alone[0] + alone[1]) / 2, atol=1e-6)
    raw = np.round(image[..., 0] * 255).astype(np.uint8)
    predictor = BatchPredictor(run, inference)
    labels, probabilities = predictor.predict_raw(raw, keep_probabilities=True)
    assert labels.shape == raw.shape and probabilities.shape == (40, 48, 1)
    np.testing.assert_allclose(probabilities, predictor.predict_image(
        run.preprocess(raw)), atol=1e-6)


@pytest.mark.slow
def test_a_time_budget_that_affords_few_passes_trains_on_resampled_images(tmp_path,
                                                                            monkeypatch):
    import unet_cbam.plan as plan
    from unet_cbam.export import preprocessing_spec
    from unet_cbam.run import RunFolder
    from unet_cbam.training import train

    monkeypatch.setattr(plan, "TARGET_PASSES", 1e9)  # whatever this machine's speed
    root = _blobs(tmp_path / "data")
    config = RunConfig(model=ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1),
                       data=DataConfig(data=str(root), val_fraction=0.25, augmentation="none"),
                       train=TrainConfig(time_budget="6s", warmup_epochs=0))
    train(config, tmp_path / "run", progress=False)
    saved = RunFolder(tmp_path / "run").config
    width = RunFolder(tmp_path / "run").read_fingerprint()["structure_width"]["foreground"]
    # Limited by the disc's width (20 px) or the images' side (4 cells of 4 px at depth 2).
    floor = max(plan.MIN_RESAMPLED_WIDTH / width, 16 / 256)
    assert saved.data.scale == pytest.approx(np.ceil(floor / 0.05 - 1e-9) * 0.05)
    assert saved.data.scale < 1 and "not lower" in saved.plan["scale"]["reason"]
    side = round(256 * saved.data.scale)
    assert saved.data.patch_size == side // 4 * 4 == saved.plan["patch_size"]["value"]

    loaded = load_run(tmp_path / "run")
    raw = cv2.imread(str(root / "images" / "d0.png"), cv2.IMREAD_UNCHANGED)
    labels, _ = BatchPredictor(loaded, InferenceConfig()).predict_raw(raw)
    assert labels.shape == raw.shape
    assert preprocessing_spec(loaded, "onnx")["scale"]["value"] == saved.data.scale


@pytest.mark.parametrize("widths, scales", [
    ({"background": 6.0, "foreground": 30.25}, [1.0] * 5),        # ISBI's membranes
    ({"background": 317.05, "foreground": 24.83}, [0.85] * 5),    # CTC's nuclei
    ({"class0": 10.0, "class4": 86.0}, [1.0] * 5),                # LabelMeFacade's thinnest
    ({"background": 533.18, "foreground": 105.33}, [0.2, 0.3, 0.4, 0.45, 0.8]),  # Kvasir
])
def test_only_wide_structures_trade_resolution_for_passes(widths, scales):
    """The shared data sets' structure widths (their fingerprints, 2026-12-07) at the passes
    their 20-minute runs measured at full resolution (0.8 on the AVX2 EPYC to 39 for ISBI):
    ISBI's membranes and LabelMeFacade's thinnest class keep full resolution, CTC's nuclei
    go to their floor (0.85: 21 px), and Kvasir-SEG's wide polyps at 0.8 passes (AVX2) to
    theirs, 0.2, whatever TARGET_PASSES is."""
    fingerprint = {"image_size": {"median": [530.0, 620.0]}, "structure_width": widths}
    assert [choose_scale(fingerprint, 16, passes)[0]
            for passes in (0.8, 4.2, 8.6, 11.2, 39.1)] == scales
