"""Exports: SavedModel, ONNX and TFLite, their parity, preprocessing.json, and use
without unet_cbam."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import make_untrained_run
from unet_cbam.cli.export import main as export_main
from unet_cbam.export import PREPROCESSING_FILE, export_run

ROOT = Path(__file__).resolve().parents[1]


FORMATS = ("onnx", "savedmodel", "tflite", "openvino")


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory):
    """An untrained run exported to every format, made once for all the pytest processes
    (``helpers.made_once``): (the run folder, each format's path as export_run returned
    it). Trained on images resampled by 0.5: the example must resample as predict.py
    does."""
    from helpers import made_once

    def make(folder, _):
        run = make_untrained_run(folder / "run", channels=1, scale=0.5)
        paths = {fmt: str(export_run(run, fmt).relative_to(run)) for fmt in FORMATS}
        (folder / "exports.json").write_text(json.dumps(paths))

    folder = made_once(tmp_path_factory, "exported_run", make)
    paths = json.loads((folder / "exports.json").read_text())
    return folder / "run", {fmt: folder / "run" / path for fmt, path in paths.items()}


@pytest.fixture
def run_dir(exported_run):
    return exported_run[0]


@pytest.fixture
def exports(exported_run):
    return exported_run[1]


@pytest.mark.slow
def test_every_format_exports_with_parity_and_its_preprocessing(exports, run_dir):
    assert exports["onnx"] == run_dir / "export" / "onnx" / "model.onnx"
    assert (exports["savedmodel"] / "saved_model.pb").is_file()
    assert exports["openvino"] == run_dir / "export" / "openvino" / "model.xml"
    assert exports["openvino"].with_suffix(".bin").is_file()
    for fmt, path in exports.items():
        spec_path = (path if fmt == "savedmodel" else path.parent) / PREPROCESSING_FILE
        spec = json.loads(spec_path.read_text())
        assert spec["format"] == fmt and spec["parity_max_abs_difference"] <= 1e-4
        assert spec["input"] == {**spec["input"], "channels": 1, "divisor": 4, "size": None}
        assert spec["normalization"]["mode"] == "bitdepth"
        assert spec["scale"]["value"] == 0.5
        assert spec["output"] == {"activation": "sigmoid",
                                  "classes": ["background", "foreground"]}
        assert spec["labels"]["threshold"] == 0.5
        assert spec["mask_encoding"]["values"] == [0, 255]


def test_exports_take_any_divisible_size(exports, run_dir):
    from unet_cbam.export import run_exported
    from unet_cbam.loading import load_run

    model = load_run(run_dir).model
    images = np.random.default_rng(1).random((1, 36, 52, 1), dtype=np.float32)
    expected = model.predict(images, verbose=0)
    for fmt, path in exports.items():
        np.testing.assert_allclose(run_exported(path, fmt, images), expected, atol=1e-4)


def test_nothing_is_overwritten_and_bad_sizes_are_refused(exports, run_dir, capsys, tmp_path):
    before = exports["onnx"].read_bytes()
    assert export_main([str(run_dir), "--format", "onnx"]) == 2
    assert "model.onnx: exists" in capsys.readouterr().err
    assert exports["onnx"].read_bytes() == before
    weights = exports["openvino"].with_suffix(".bin").read_bytes()
    assert export_main([str(run_dir), "--format", "openvino"]) == 2
    assert "model.xml: exists" in capsys.readouterr().err
    assert exports["openvino"].with_suffix(".bin").read_bytes() == weights
    assert export_main([str(run_dir), "--format", "tflite", "--input-size", "30", "32",
                        "--output", str(tmp_path / "t.tflite")]) == 2
    assert "input_size [30, 32] must be [height, width], each a positive multiple of 4" in \
        capsys.readouterr().err
    assert not (tmp_path / "t.tflite").exists()


@pytest.mark.slow
def test_fixed_size_tflite(run_dir, tmp_path):
    path = export_run(run_dir, "tflite", tmp_path / "fixed" / "m.tflite", input_size=[32, 48])
    spec = json.loads((path.parent / PREPROCESSING_FILE).read_text())
    assert spec["input"]["size"] == [32, 48]


@pytest.mark.slow
def test_a_run_trained_in_bfloat16_exports_in_float32(tmp_path):
    from unet_cbam.export import run_exported
    from unet_cbam.loading import load_run, model_policy

    # mixed bfloat16: what auto trains in on CPUs with bfloat16 units
    run_dir = make_untrained_run(tmp_path / "run", channels=1, policy="mixed_bfloat16")
    run = load_run(run_dir)
    assert model_policy(run.model) == "mixed_bfloat16"
    path = export_run(run_dir, "onnx")
    spec = json.loads((path.parent / PREPROCESSING_FILE).read_text())
    assert spec["parity_max_abs_difference"] <= 1e-4  # against the float32 rebuild
    images = np.random.default_rng(2).random((1, 32, 40, 1), dtype=np.float32)
    exported = run_exported(path, "onnx", images)
    assert exported.dtype == np.float32
    # the same weights: within bfloat16's rounding of the run's own forward pass
    np.testing.assert_allclose(exported, run.model.predict(images, verbose=0), atol=0.05)


def test_export_refuses_to_finish_when_parity_fails(run_dir, tmp_path, monkeypatch):
    import unet_cbam.export as export

    monkeypatch.setattr(export, "check_parity", lambda *args, **kwargs: 0.5)
    with pytest.raises(ValueError, match="differs from Keras by up to 0.5"):
        export_run(run_dir, "onnx", tmp_path / "bad" / "model.onnx")
    assert not (tmp_path / "bad" / "model.onnx").exists()
    assert not (tmp_path / "bad" / PREPROCESSING_FILE).exists()


def test_a_cross_validation_run_is_exported_fold_by_fold(tmp_path):
    for index in range(2):
        make_untrained_run(tmp_path / "cv" / f"fold_{index}", channels=1)
    with pytest.raises(ValueError, match="export one fold's folder"):
        export_run(tmp_path / "cv", "onnx")


@pytest.mark.slow
def test_exports_run_without_unet_cbam_and_the_example_matches_predict(exports, run_dir,
                                                                       tmp_path):
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    raw = (np.random.default_rng(2).random((37, 50)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "image.png"), raw)
    labels, _ = BatchPredictor(load_run(run_dir),
                               InferenceConfig(precision="float32")).predict_raw(raw)
    np.save(tmp_path / "expected.npy", np.where(labels > 0, 255, 0).astype(np.uint8))
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "unet_cbam" or name.startswith("unet_cbam."):
                    raise ImportError("unet_cbam is hidden")
        sys.meta_path.insert(0, Hide())
        sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
        sys.path.insert(0, {str(ROOT / "docs" / "examples")!r})
        import numpy as np, tensorflow as tf
        try:
            import unet_cbam
            raise SystemExit("unet_cbam is importable")
        except ImportError:
            pass
        from onnx_predict import predict
        mask = predict(__import__("pathlib").Path({str(exports["onnx"].parent)!r}),
                       {str(tmp_path / "image.png")!r})
        expected = np.load({str(tmp_path / "expected.npy")!r})
        assert mask.dtype == np.uint8 and (mask == expected).all(), (mask != expected).sum()
        loaded = tf.saved_model.load({str(exports["savedmodel"])!r})
        image = np.random.default_rng(0).random((1, 32, 44, 1), dtype=np.float32)
        print("savedmodel", loaded.serve(image).shape)
        from ai_edge_litert.interpreter import Interpreter
        interpreter = Interpreter(model_path={str(exports["tflite"])!r})
        print("tflite", interpreter.get_input_details()[0]["shape_signature"].tolist())
        import openvino
        compiled = openvino.Core().compile_model({str(exports["openvino"])!r}, "CPU")
        print("openvino", compiled(image)[0].shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "savedmodel (1, 32, 44, 1)" in result.stdout
    assert "openvino (1, 32, 44, 1)" in result.stdout


def test_predict_with_the_onnxruntime_runtime_matches_keras(run_dir):
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    run = load_run(run_dir)
    raw = (np.random.default_rng(3).random((70, 90)) * 255).astype(np.uint8)
    inference = InferenceConfig(tile_size=48, tta=True, precision="float32")
    keras_labels, keras_probabilities = BatchPredictor(run, inference).predict_raw(
        raw, keep_probabilities=True)
    onnx = BatchPredictor(run, InferenceConfig(tile_size=48, tta=True, runtime="onnxruntime"))
    assert onnx.precision == "float32"  # auto, whatever the CPU: onnxruntime runs float32
    onnx_labels, onnx_probabilities = onnx.predict_raw(raw, keep_probabilities=True)
    np.testing.assert_allclose(onnx_probabilities, keras_probabilities, atol=1e-5)
    clear = np.abs(keras_probabilities[..., -1] - onnx.threshold) > 1e-3
    np.testing.assert_array_equal(onnx_labels[clear], keras_labels[clear])
    with pytest.raises(ValueError, match="precision float16 needs runtime keras"):
        BatchPredictor(run, InferenceConfig(runtime="onnxruntime", precision="float16"))


def test_predict_with_the_openvino_runtime_matches_keras(run_dir):
    pytest.importorskip("openvino")
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    run = load_run(run_dir)
    raw = (np.random.default_rng(4).random((70, 90)) * 255).astype(np.uint8)
    inference = InferenceConfig(tile_size=48, tta=True, precision="float32")
    keras_labels, keras_probabilities = BatchPredictor(run, inference).predict_raw(
        raw, keep_probabilities=True)
    openvino = BatchPredictor(run, InferenceConfig(tile_size=48, tta=True, runtime="openvino",
                                                   precision="float32"))
    labels, probabilities = openvino.predict_raw(raw, keep_probabilities=True)
    np.testing.assert_allclose(probabilities, keras_probabilities, atol=1e-5)
    clear = np.abs(keras_probabilities[..., -1] - openvino.threshold) > 1e-3
    np.testing.assert_array_equal(labels[clear], keras_labels[clear])
    # Any tile size the divisor allows, one model: the conversion keeps height and width open.
    assert openvino.predict_image(np.zeros((32, 40, 1), np.float32)).shape == (32, 40, 1)
    with pytest.raises(ValueError, match="precision float16 needs runtime keras"):
        BatchPredictor(run, InferenceConfig(runtime="openvino", precision="float16"))
    assert BatchPredictor(run, InferenceConfig(runtime="openvino")).precision in (
        "float32", "bfloat16")


@pytest.mark.parametrize("precision, gpus, installed, expected", [
    ("float32", 0, True, ["keras", "onnxruntime", "openvino"]),
    ("bfloat16", 0, True, ["keras", "openvino"]),
    ("float16", 0, True, ["keras"]),
    ("float32", 0, False, ["keras"]),
    ("float32", 1, True, ["keras"]),
])
def test_auto_runtime_times_the_runtimes_that_can_run(monkeypatch, precision, gpus, installed,
                                                      expected):
    import importlib.util

    from unet_cbam.runtime import choose_runtime, runtime_candidates

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real(name, *a) if installed else None)
                        if name in ("onnxruntime", "tf2onnx", "openvino") else real(name, *a))
    candidates, left_out = runtime_candidates(precision, gpus=gpus)
    assert candidates == expected, left_out
    if not installed:
        assert left_out == ["onnxruntime: onnxruntime and tf2onnx not installed",
                            "openvino: openvino not installed"]
    assert choose_runtime("auto", precision, gpus=gpus)[0] == ("keras" if gpus else "auto")
    assert choose_runtime("onnxruntime", precision, gpus=gpus) == ("onnxruntime", "asked for")


def test_the_fastest_runtime_that_agrees_wins():
    from unet_cbam.runtime import fastest

    results = {"keras": {"seconds": 1.0, "max_difference": 0.0, "agrees": True},
               "onnxruntime": {"seconds": 0.5, "max_difference": 0.3, "agrees": False},
               "openvino": {"seconds": 0.8, "max_difference": 1e-6, "agrees": True}}
    runtime, reason = fastest(results)
    assert runtime == "openvino"
    assert reason == ("fastest of keras 1 s, onnxruntime 0.5 s (disagrees with keras float32: "
                      "0.3), "
                      "openvino 0.8 s for a batch of tiles")


@pytest.mark.slow
def test_auto_runtime_is_timed_once_per_machine_and_model_then_cached(run_dir, tmp_path,
                                                                      monkeypatch):
    import unet_cbam.predict as predict
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.runtime import cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = load_run(run_dir)
    inference = InferenceConfig(runtime="auto", precision="float32", tile_size=64)
    first = predict.BatchPredictor(run, inference)
    [choice] = json.loads(cache_file().read_text()).values()
    assert set(choice["results"]) == {"keras", "onnxruntime", "openvino"}
    assert first.runtime == choice["runtime"] and first.precision == "float32"
    timed = {name: r["seconds"] for name, r in choice["results"].items() if r["agrees"]}
    assert first.runtime == min(timed, key=timed.get)
    # Again: from the cache, nothing timed; the masks are those of the chosen runtime.
    monkeypatch.setattr(predict, "time_runtimes", lambda *a: pytest.fail("timed again"))
    again = predict.BatchPredictor(run, inference)
    assert again.runtime == first.runtime
    raw = (np.random.default_rng(6).random((70, 90)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(again.predict_raw(raw)[0], first.predict_raw(raw)[0])
    # Another tile size is another question: timed anew.
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    predict.BatchPredictor(run, InferenceConfig(runtime="auto", precision="float32",
                                                tile_size=48))
    assert len(json.loads(cache_file().read_text())) == 2
    # In bfloat16 every candidate is held to Keras float32, Keras bfloat16 included.
    predict.BatchPredictor(run, InferenceConfig(runtime="auto", precision="bfloat16",
                                                tile_size=48))
    choices = json.loads(cache_file().read_text())
    [bfloat16] = [choice for key, choice in choices.items() if "|bfloat16|" in key]
    assert set(bfloat16["results"]) == {"keras", "openvino"}
    assert bfloat16["results"]["keras"]["max_difference"] > 0


@pytest.mark.parametrize("precision, candidates, installed, expected", [
    ("auto", ["keras", "onnxruntime", "openvino"], True, (True, "")),
    ("float32", ["keras", "onnxruntime", "openvino"], True,
     (False, "int8: --precision float32 asked for")),
    ("auto", ["keras"], True, (False, "int8: openvino not a candidate")),
    ("auto", ["keras", "openvino"], False, (False, "int8: nncf not installed")),
])
def test_int8_is_a_candidate_of_auto_only_where_the_precision_is_left_to_it(
        monkeypatch, precision, candidates, installed, expected):
    import importlib.util

    from unet_cbam.runtime import int8_candidate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nncf" and not installed
                        else real(name, *a))
    assert int8_candidate(precision, candidates) == expected


def test_reduced_precision_candidates_are_held_to_float32_not_to_each_other():
    """Two bfloat16 runtimes round differently: OpenVINO bfloat16 0.025 from Keras bfloat16
    (an AVX512_BF16 EPYC) was refused though closer to float32. Each is held to Keras
    float32: within AGREEMENT, or no further than Keras itself is in that precision."""
    from unet_cbam.runtime import AGREEMENT, fastest, time_runtimes

    tiles = np.zeros((2, 8, 8, 1), np.float32)
    reference = np.full(tiles.shape, 0.5, np.float32)  # Keras float32

    def constant(value):
        return lambda t: np.full(t.shape, value, np.float32)

    predictors = {"keras": constant(0.53),         # Keras bfloat16: 0.03 from float32
                  "openvino": constant(0.48),      # 0.02 from float32, 0.05 from keras
                  "onnxruntime": constant(0.54)}   # 0.04 from float32: further than keras
    results = time_runtimes(predictors, tiles, "bfloat16", rounds=1, reference=reference)
    assert {name: r["agrees"] for name, r in results.items()} == {
        "keras": True, "openvino": True, "onnxruntime": False}
    assert results["openvino"]["max_difference"] == pytest.approx(0.02)
    assert results["keras"]["max_difference"] == pytest.approx(0.03)
    # Where Keras is closer to float32 than AGREEMENT allows, AGREEMENT is the bound.
    predictors["keras"] = constant(0.5)
    predictors["openvino"] = constant(0.5 + AGREEMENT["bfloat16"] / 2)
    results = time_runtimes(predictors, tiles, "bfloat16", rounds=1, reference=reference)
    assert results["openvino"]["agrees"] and not results["onnxruntime"]["agrees"]
    for name, seconds in (("keras", 1.0), ("openvino", 0.5), ("onnxruntime", 0.1)):
        results[name]["seconds"] = seconds
    assert fastest(results)[0] == "openvino"
    # Without a reference, Keras runs float32 and is it.
    results = time_runtimes({"keras": constant(0.5), "openvino": constant(0.5 + 2e-4)},
                            tiles, "float32", rounds=1)
    assert not results["openvino"]["agrees"]


def test_a_checked_candidate_agrees_by_its_check_and_is_timed_like_the_others():
    from unet_cbam.runtime import fastest, time_runtimes

    tiles = np.zeros((2, 8, 8, 1), np.float32)
    predictors = {"keras": lambda t: np.full(t.shape, 0.5, np.float32),
                  "openvino": lambda t: np.full(t.shape, 0.9, np.float32),
                  "openvino-int8": lambda t: np.full(t.shape, 0.7, np.float32)}
    results = time_runtimes(predictors, tiles, "float32", rounds=1,
                            checked=frozenset({"openvino-int8"}))
    assert results["openvino"]["agrees"] is False
    assert results["openvino-int8"]["agrees"] is True
    assert results["openvino-int8"]["checked_on_validation"] is True
    assert results["openvino-int8"]["max_difference"] == pytest.approx(0.2)
    for name, seconds in (("keras", 1.0), ("openvino", 0.1), ("openvino-int8", 0.5)):
        results[name]["seconds"] = seconds
    runtime, reason = fastest(results)
    assert runtime == "openvino-int8" and "openvino-int8 0.5 s (its validation check passed)" \
        in reason
