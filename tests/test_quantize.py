"""INT8 through OpenVINO and NNCF: calibrated on the run's training images, checked on its
validation images, cached, and refused or replaced by float32 where it should be."""

import json
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from unet_cbam import quantize  # noqa: E402
from unet_cbam.config import InferenceConfig  # noqa: E402
from unet_cbam.loading import load_run  # noqa: E402
from unet_cbam.precision import choose_precision  # noqa: E402
from unet_cbam.predict import BatchPredictor  # noqa: E402


@pytest.fixture
def run_dir(isbi_run, tmp_path):
    """A copy of the trained ISBI run: the INT8 cache is written into the run folder."""
    return shutil.copytree(isbi_run, tmp_path / "run", symlinks=True)


def _raw():
    return (np.random.default_rng(5).random((96, 128)) * 255).astype(np.uint8)


@pytest.mark.slow
def test_int8_is_checked_on_validation_cached_and_reused(run_dir, monkeypatch):
    predictor = BatchPredictor(load_run(run_dir), InferenceConfig(precision="int8",
                                                                  tile_size=128))
    assert predictor.runtime == "openvino" and predictor.precision == "int8"
    [cache] = (run_dir / "int8").iterdir()
    check = json.loads((cache / "check.json").read_text())
    assert check["validation_images"] == 2 and check["calibration_tiles"] >= 1
    assert set(check["dice_drop"]) == {"membrane", "cell"}
    drops = {name: round(check["dice_float32"][name] - check["dice_int8"][name], 6)
             for name in check["dice_drop"]}
    assert drops == check["dice_drop"]
    assert check["accepted"] == (max(drops.values()) <= quantize.INT8_TOLERANCE)
    assert predictor.int8 == [check["accepted"]]
    assert (cache / "model.xml").is_file() == check["accepted"]
    labels, probabilities = predictor.predict_raw(_raw(), keep_probabilities=True)
    assert labels.shape == (96, 128) and probabilities.dtype == np.float32

    # A second start reads the verdict (and the model) from the cache: no quantising.
    monkeypatch.setattr(quantize, "quantize", lambda *a: pytest.fail("quantised again"))
    again = BatchPredictor(load_run(run_dir), InferenceConfig(precision="int8",
                                                              tile_size=128))
    assert again.int8 == predictor.int8
    np.testing.assert_array_equal(again.predict_raw(_raw())[0], labels)


@pytest.mark.slow
def test_int8_that_fails_its_check_falls_back_to_float32(run_dir, monkeypatch):
    monkeypatch.setattr(quantize, "INT8_TOLERANCE", -1.0)  # no model can pass
    predictor = BatchPredictor(load_run(run_dir), InferenceConfig(precision="int8",
                                                                  tile_size=128))
    assert predictor.int8 == [False]
    [cache] = (run_dir / "int8").iterdir()
    check = json.loads((cache / "check.json").read_text())
    assert not check["accepted"] and check["reason"].endswith(": float32")
    assert not (cache / "model.xml").exists()
    float32 = BatchPredictor(load_run(run_dir), InferenceConfig(
        precision="float32", runtime="openvino", tile_size=128))
    _, expected = float32.predict_raw(_raw(), keep_probabilities=True)
    _, probabilities = predictor.predict_raw(_raw(), keep_probabilities=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


@pytest.mark.slow
def test_int8_without_the_training_images_is_float32_and_says_why(run_dir, caplog):
    (run_dir / "split.json").write_text(json.dumps({"train": ["gone"], "val": ["gone2"]}))
    with caplog.at_level("INFO", logger="unet_cbam.predict"):
        predictor = BatchPredictor(load_run(run_dir), InferenceConfig(precision="int8"))
    assert predictor.int8 == [False]
    assert "images are not where it was trained" in caplog.text
    assert not (run_dir / "int8").exists()  # nothing checked, nothing remembered


def test_int8_runs_on_openvino_only(tmp_path):
    from helpers import make_untrained_run

    run = load_run(make_untrained_run(tmp_path / "run", channels=1))
    with pytest.raises(ValueError, match="precision int8 runs on runtime openvino .* not "
                                         "onnxruntime"):
        BatchPredictor(run, InferenceConfig(precision="int8", runtime="onnxruntime"))


def test_calibration_tiles_are_spread_over_the_images():
    images = [np.full((64, 96, 1), value, np.float32) for value in (0.1, 0.2)]
    tiles = quantize.calibration_tiles(images, 1.0, 32, 16)
    assert len(tiles) == 12 and all(t.shape == (1, 32, 32, 1) for t in tiles)
    assert [float(t[0, 0, 0, 0]) for t in tiles[:4]] == pytest.approx([0.1, 0.2, 0.1, 0.2])
    # Resampled by the run's scale first; small images set a smaller, divisible tile.
    tiles = quantize.calibration_tiles(images, 0.5, 256, 16)
    assert {t.shape for t in tiles} == {(1, 32, 32, 1)} and len(tiles) == 2


@pytest.mark.slow
def test_auto_times_the_checked_int8_model_and_runs_it_when_fastest(run_dir, tmp_path,
                                                                    monkeypatch):
    import unet_cbam.predict as predict
    from unet_cbam.runtime import INT8_CANDIDATE, cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(quantize, "INT8_TOLERANCE", 1.0)  # this tiny model's check passes
    real = predict.time_runtimes

    def int8_fastest(predictors, *args, **kwargs):  # every candidate really runs
        results = real(predictors, *args, **kwargs)
        results[INT8_CANDIDATE]["seconds"] = 0.0
        return results

    monkeypatch.setattr(predict, "time_runtimes", int8_fastest)
    import unet_cbam.runtime as runtime

    converted = []  # the OpenVINO conversions: the member serves both candidates from one

    def counted(model, folder, convert=runtime.to_openvino):
        converted.append(folder)
        return convert(model, folder)

    monkeypatch.setattr(predict, "to_openvino", counted)
    monkeypatch.setattr(runtime, "to_openvino", counted)
    inference = InferenceConfig(runtime="auto", precision="auto", tile_size=128)
    chosen = BatchPredictor(load_run(run_dir), inference)
    assert len(converted) == 1
    [choice] = json.loads(cache_file().read_text()).values()
    assert set(choice["results"]) == {*_float_candidates(), INT8_CANDIDATE}
    assert choice["results"][INT8_CANDIDATE]["checked_on_validation"]
    assert choice["runtime"] == INT8_CANDIDATE
    assert (chosen.runtime, chosen.precision, chosen.int8) == ("openvino", "int8", [True])
    asked = BatchPredictor(load_run(run_dir), InferenceConfig(precision="int8",
                                                              tile_size=128))
    np.testing.assert_array_equal(chosen.predict_raw(_raw())[0], asked.predict_raw(_raw())[0])

    # Again: the choice from the runtime cache, the INT8 model from the run folder.
    monkeypatch.setattr(predict, "time_runtimes", lambda *a, **k: pytest.fail("timed again"))
    monkeypatch.setattr(quantize, "quantize", lambda *a: pytest.fail("quantised again"))
    again = BatchPredictor(load_run(run_dir), inference)
    assert (again.runtime, again.precision, again.int8) == ("openvino", "int8", [True])


@pytest.mark.slow
def test_auto_leaves_out_an_int8_model_its_check_refused_and_says_why(run_dir, tmp_path,
                                                                      monkeypatch, caplog):
    import unet_cbam.predict as predict
    from unet_cbam.runtime import cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    refused = "INT8 checked on 2 validation images: membrane's Dice fell 0.01: float32"
    asked = []
    monkeypatch.setattr(predict, "int8_model", lambda folder, *a: asked.append(folder) or
                        quantize.Int8Outcome(None, refused, {}))
    with caplog.at_level("INFO", logger="unet_cbam.predict"):
        predictor = BatchPredictor(load_run(run_dir), InferenceConfig(
            runtime="auto", precision="auto", tile_size=128))
    assert asked == [run_dir]  # the run's own check decides
    [choice] = json.loads(cache_file().read_text()).values()
    assert set(choice["results"]) == set(_float_candidates())
    assert (predictor.precision, predictor.int8) == (choose_precision("auto")[0], None)
    assert predictor.runtime == choice["runtime"]
    # the last of the reasons left out (with bfloat16 units: after onnxruntime's)
    assert re.search(rf"[(;] int8: {re.escape(refused)}\)$|\(int8: {re.escape(refused)}\)$",
                     choice["reason"])
    assert f"runtime {predictor.runtime}, {predictor.precision} (fastest of" in caplog.text


def _float_candidates() -> list[str]:
    """The runtimes auto times besides INT8 on this machine (with --precision auto)."""
    from unet_cbam.runtime import runtime_candidates

    return runtime_candidates(choose_precision("auto")[0], gpus=0)[0]
