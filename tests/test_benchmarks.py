"""The ISBI benchmark's bookkeeping: which model each name trains, aggregation, the table."""

import dataclasses
import importlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from unet_cbam.config import ModelConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    """A benchmark script's module (``python -m benchmarks.NAME``)."""
    return importlib.import_module(f"benchmarks.{name}")


@pytest.fixture(scope="module")
def isbi():
    return load_script("isbi2012")


def differences(config: ModelConfig) -> dict:
    default = dataclasses.asdict(ModelConfig(num_classes=1))
    return {key: value for key, value in dataclasses.asdict(config).items()
            if default[key] != value}


def test_default_model_is_what_train_py_builds(isbi):
    assert isbi.model_config_for(isbi.DEFAULT_MODEL) == ModelConfig(num_classes=1)


@pytest.mark.parametrize("name, changed", [
    ("unet-none", {"attention": "none"}),
    ("unet-channel", {"attention": "channel"}),
    ("unet-spatial", {"attention": "spatial"}),
    ("unet-cbam", {}),
    ("unet-cbam-blog", {"cbam_variant": "blog"}),
    ("unet-cbam-resnet18", {"encoder": "resnet18"}),
])
def test_ablation_changes_one_field(isbi, name, changed):
    assert differences(isbi.model_config_for(name)) == changed


def test_peer_is_built_by_segmentation_models(isbi):
    assert isbi.MODELS["sm-unet-resnet18"] is None
    model = isbi.build_peer(isbi.model_config_for("sm-unet-resnet18"))
    assert not any(layer.name.startswith("skip") for layer in model.layers)
    assert model.output_shape == (None, None, None, 1)


def fake(model, seed, dice, seconds):
    return {"model": model, "seed": seed, "params": 1_500_000, "membrane_dice": dice,
            "cell_dice": 0.9, "mean_iou": 0.7, "pixel_error": 0.1, "val_mean_dice": 0.8,
            "train_patches_per_s": 20.0, "train_seconds": seconds,
            "predict_images_per_s": 5.0, "peak_rss_mb": 1000.0}


def test_aggregate_means_and_standard_deviations(isbi):
    results = [fake("unet-cbam", 0, 0.70, 100), fake("unet-cbam", 1, 0.74, 120),
               fake("unet-cbam", 2, 0.78, 140), fake("unet-none", 0, 0.60, 90)]
    rows = isbi.aggregate(results)
    assert [row["model"] for row in rows] == ["unet-none", "unet-cbam"]  # MODELS order
    none, cbam = rows
    assert cbam["seeds"] == 3
    assert cbam["membrane_dice"] == pytest.approx(0.74)
    assert cbam["membrane_dice_std"] == pytest.approx(0.04)
    assert cbam["train_seconds"] == pytest.approx(120)
    assert none["membrane_dice_std"] == 0.0


def test_markdown_table(isbi, tmp_path):
    results = [fake("unet-cbam", 0, 0.70, 100), fake("unet-cbam", 1, 0.74, 120)]
    budget = {"epochs": 12, "steps_per_epoch": 50, "batch_size": 8, "patch_size": 128,
              "learning_rate": 1e-3, "augmentation": "light"}
    info = {"cpu": "Test CPU", "cpu_cores": 2, "gpus": [], "commit": "0123456789abcdef",
            "packages": {"tensorflow": "2.x", "keras": "3.x"}, "date": "2026-01-01"}
    rows = isbi.aggregate(results)
    table = isbi.markdown(rows, budget, info)
    assert "| unet-cbam | 1.50 M | 0.720 ± 0.028 |" in table
    assert "600 steps of 8 random 128x128 patches" in table
    assert "Test CPU, 2 cores" in table and "commit 0123456789ab, 2026-01-01" in table
    isbi.plot(results, rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_slices_are_linked_not_copied(isbi, isbi_dir, tmp_path):
    assert isbi.ISBI.resolve() == isbi_dir.resolve()  # skips where the data set is absent
    root = isbi.link_slices(tmp_path / "train", range(0, 2))
    for kind in ("images", "masks"):
        files = sorted((root / kind).iterdir())
        assert [file.name for file in files] == ["slice00.png", "slice01.png"]
        assert all(file.is_symlink() and file.resolve().is_file() for file in files)


def test_set_changes_every_unet_cbam_model_but_not_their_own_field(isbi):
    changes = isbi.parse_changes(["base_filters=32", "reduction_ratio=4"])
    assert changes == {"base_filters": 32, "reduction_ratio": 4}
    assert differences(isbi.model_config_for("unet-none", changes)) == {
        "base_filters": 32, "reduction_ratio": 4, "attention": "none"}


@pytest.mark.parametrize("item", ["base_filters", "colour=3", "base_filters=0",
                                  "attention=none", "encoder=resnet34"])
def test_set_rejects_bad_changes(isbi, item):
    with pytest.raises((SystemExit, ValueError)):
        isbi.parse_changes([item])


def test_attention_statistics_on_known_gates():
    module = load_script("attention_stats")
    import numpy as np

    # two images, two channels: channel 0 always 0.2, channel 1 0.6 then 1.0
    channel = np.array([[0.2, 0.6], [0.2, 1.0]], dtype="float32")
    spatial = np.zeros((2, 2, 2), dtype="float32")
    spatial[0] = [[0.0, 1.0], [0.0, 1.0]]  # std 0.5 within image 0
    spatial[1] = 0.5  # constant image 1
    [row] = module.gate_statistics({1: {"channel": channel, "spatial": spatial}})
    assert row["level"] == 1 and row["channels"] == 2
    assert row["channel_mean"] == pytest.approx(0.5)
    assert row["channel_below_half"] == pytest.approx(0.5)
    assert row["channel_std_across_channels"] == pytest.approx(0.3)  # means 0.2 and 0.8
    assert row["channel_std_across_images"] == pytest.approx(0.1)  # stds 0 and 0.2
    assert row["spatial_mean"] == pytest.approx(0.5)
    assert row["spatial_below_half"] == pytest.approx(0.25)
    assert row["spatial_std_within_image"] == pytest.approx(0.25)
    [only_channel] = module.gate_statistics({0: {"channel": channel}})
    assert "spatial_mean" not in only_channel


def test_attention_statistics_pool_spatial_maps_of_different_sizes():
    module = load_script("attention_stats")
    import numpy as np

    channel = np.array([[0.2, 0.6], [0.2, 1.0]], dtype="float32")
    small = np.array([[0.0, 1.0]], dtype="float32")  # 2 pixels, std 0.5
    large = np.full((2, 3), 0.75, dtype="float32")  # 6 pixels, std 0
    [row] = module.gate_statistics({2: {"channel": channel, "spatial": [small, large]}})
    assert row["spatial_mean"] == pytest.approx((1.0 + 6 * 0.75) / 8)
    assert row["spatial_below_half"] == pytest.approx(1 / 8)
    assert row["spatial_std_within_image"] == pytest.approx(0.25)


@pytest.mark.slow
def test_attention_statistics_of_a_run_use_its_validation_images_as_predict_does(isbi_run):
    import json

    import numpy as np

    from unet_cbam.attention import attention_maps
    from unet_cbam.data.io import read_raw
    from unet_cbam.loading import load_run

    module = load_script("attention_stats")
    images = module.validation_images(isbi_run)
    split = json.loads((isbi_run / "split.json").read_text())
    assert [image.stem for image in images] == sorted(split["val"])
    rows = module.run_statistics(isbi_run, images)
    # one image at a time through predict.py's preparation equals one batch of the
    # equally sized slices, normalised by the run
    run = load_run(isbi_run)
    batch = np.stack([run.preprocess(read_raw(image), image) for image in images])
    expected = module.gate_statistics(attention_maps(run.model, batch))
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert row == pytest.approx(want, rel=1e-5)
    assert [row["level"] for row in rows] == [1, 2]  # depth 3, the default: all but level 0
    assert [row["channels"] for row in rows] == [16, 32]


@pytest.mark.slow
def test_tune_on_benchmark_predicts_each_choice_of_one_model(isbi_run, isbi_dir, tmp_path):
    import numpy as np

    from unet_cbam.config import RunConfig
    from unet_cbam.run import RunFolder

    test = tmp_path / "test"
    for kind in ("images", "masks"):
        (test / kind).mkdir(parents=True)
        for index in (8, 9):
            (test / kind / f"slice{index:02d}.png").symlink_to(
                isbi_dir / kind / f"slice{index:02d}.png")
    module = load_script("tune_on")
    tuned, names = module.choices(isbi_run)
    assert names == ["membrane", "cell"]
    assert [choice["judge"] for choice in tuned] == names
    assert [choice["inference"]["tuned_on"] for choice in tuned] == names
    before = (isbi_run / "config.yaml").read_text()
    rows = module.compare(isbi_run, test, tmp_path / "work", confidences=[0.0, 0.95])
    assert (isbi_run / "config.yaml").read_text() == before  # the run itself untouched
    assert [(row["chosen on"], row["rule"]) for row in rows] == [
        ("membrane", "any gain"), ("membrane", "confidence 0.95"), ("cell", "any gain"),
        ("cell", "confidence 0.95"), ("none (0.5, no post-processing)", "-")]
    assert rows[-1]["threshold"] == 0.5
    copy = RunFolder(tmp_path / "work" / "run-0").config
    assert isinstance(copy, RunConfig)
    assert copy.inference.to_config() == \
        module.choices(isbi_run, ["membrane"], [0.0])[0][0]["inference"]
    for row in rows:
        assert 0.0 < row["test dice membrane"] < 1.0 and 0.0 < row["test dice cell"] < 1.0
    if rows[0]["threshold"] == rows[2]["threshold"] and rows[0]["steps"] == rows[2]["steps"]:
        assert rows[0]["test dice membrane"] == rows[2]["test dice membrane"]
    assert np.isfinite(rows[0]["validation dice (chosen on)"])
    with pytest.raises(SystemExit, match="--judge cells"):
        module.choices(isbi_run, ["cells"])


@pytest.mark.slow
def test_tune_on_benchmark_scores_a_fold_ensemble_on_out_of_fold_predictions(tmp_path):
    import json

    from helpers import tiny_fold_config, write_pairs
    from unet_cbam.folds import train_folds
    from unet_cbam.run import RunFolder

    data = write_pairs(tmp_path / "data", count=4, size=(32, 32), channels=1)
    run = RunFolder(tmp_path / "cv")
    train_folds(tiny_fold_config(data), run, progress=False)
    before = run.cv_metrics_path.read_text()
    module = load_script("tune_on")
    tuned, names = module.choices(run.path, confidences=[0.0])
    assert [choice["judge"] for choice in tuned] == names and len(names) == 2
    assert tuned[0]["inference"]["validation_images"] == 4  # both folds' validation pairs
    rows = module.compare(run.path, data, tmp_path / "work", [names[1]], [0.0, 0.95])
    assert run.cv_metrics_path.read_text() == before  # the run itself untouched
    assert [row["rule"] for row in rows] == ["any gain", "confidence 0.95", "-"]
    copy = tmp_path / "work" / "run-1"
    assert sorted(path.name for path in copy.iterdir()) == ["cv_metrics.json", "fold_0",
                                                           "fold_1"]
    assert (copy / "fold_0").is_symlink() and (copy / "fold_0").resolve() == run.fold(0).path
    saved = json.loads((copy / "cv_metrics.json").read_text())
    assert saved["inference"] == module.choices(run.path, [names[1]], [0.95])[0][0][
        "inference"]
    assert saved["per_fold"] == json.loads(before)["per_fold"]
    for row in rows:
        assert 0.0 <= row[f"test dice {names[1]}"] <= 1.0


def test_every_result_records_commit_date_cpu_and_versions(tmp_path, monkeypatch):
    common = load_script("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a stand-in CPU is recorded as such
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    path = common.write_json("script", "x.json", {"rows": [1]})
    assert path == tmp_path / "script" / "x.json"
    import json

    machine = json.loads(path.read_text())["machine"]
    assert len(machine["commit"].removesuffix("-dirty")) == 40
    assert machine["cpu"] and machine["date"][:4].isdigit()
    assert machine["packages"]["tensorflow"] and machine["packages"]["keras"]
    assert machine["environment"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "TF_ENABLE_ONEDNN_OPTS" not in machine["environment"]
    assert json.loads(path.read_text())["rows"] == [1]


def test_committed_results_record_their_provenance():
    import json

    paths = sorted((BENCHMARKS / "results").glob("*/*.json"))
    assert paths and not list((BENCHMARKS / "results").glob("*.json"))  # each in its folder
    for path in paths:
        if path.parent.name == "archive":  # measured before the provenance fields
            continue
        machine = json.loads(path.read_text())["machine"]
        for key in ("commit", "date", "cpu", "packages"):
            assert machine.get(key), f"{path.name} lacks machine.{key}"


def test_datasets_benchmark_splits_isbi_by_its_readme_with_links(tmp_path, isbi_dir):
    datasets = load_script("datasets")
    train, test = datasets.isbi_split(tmp_path)
    assert sorted(p.name for p in (train / "images").iterdir()) == \
        [f"slice{i:02d}.png" for i in range(24)]
    assert sorted(p.name for p in (test / "masks").iterdir()) == \
        [f"slice{i:02d}.png" for i in range(24, 30)]
    assert all(p.is_symlink() for p in (test / "images").iterdir())
    assert datasets.isbi_split(tmp_path) == (train, test)  # again: links already there
    assert set(datasets.DATA_SETS) == {"ctc", "kvasir", "isbi", "labelmefacade"}


def test_datasets_benchmark_variants_and_summary():
    datasets = load_script("datasets")
    assert datasets.parse_variants(["ablation"]) == datasets.ABLATION
    assert set(datasets.parse_variants(["peers"])) == {"default", "none", "sm-unet-resnet18"}
    assert datasets.parse_variants(["none=--attention none", "plain="]) == {
        "none": "--attention none", "plain": ""}
    with pytest.raises(SystemExit, match="not NAME=OPTIONS"):
        datasets.parse_variants(["--attention none"])
    rows = [{"data_set": "ctc", "variant": "cbam", "val_dice": v, "test_dice": t}
            for v, t in ((0.8, 0.7), (0.9, 0.9))]
    assert datasets.summarize(rows) == [{
        "data_set": "ctc", "variant": "cbam", "seeds": 2, "val_dice_mean": 0.85,
        "val_dice_std": 0.0707, "test_dice_mean": 0.8, "test_dice_std": 0.1414}]  # n - 1
    assert datasets.summarize(rows[:1])[0]["test_dice_std"] == 0.0  # one seed: no spread
    # LabelMeFacade's classes by hand: the colours as one YAML/JSON argument
    flagged = shlex.split(datasets.parse_variants(["hand-flagged"])["hand-flagged"])
    assert flagged[:4] == ["--num-classes", "9", "--mask-encoding", "rgb"]
    assert json.loads(flagged[5]) == datasets.FACADE_COLORS and len(flagged) == 6
    assert datasets.budget_seconds(["--seed", "1", "--time-budget", "5m"]) == 300
    assert datasets.budget_seconds(["--epochs", "3"]) is None
    # --full-folds: the fold count it needs, in either spelling, or an error naming it
    assert datasets.fold_count(["--time-budget", "20m", "--folds", "5"]) == 5
    assert datasets.fold_count(["--folds=3"]) == 3
    with pytest.raises(SystemExit, match="--full-folds needs --folds N"):
        datasets.fold_count(["--time-budget", "20m"])


def test_datasets_benchmark_scores_several_classes_by_their_mean_iou(tmp_path):
    datasets = load_script("datasets")
    run_dir, predictions = tmp_path / "run", tmp_path / "test"
    run_dir.mkdir()
    predictions.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"mean_iou": 0.5, "mean_dice": 0.6,
                                                      "wall_seconds": {"total": 305.2}}))
    (run_dir / "history.csv").write_text("epoch,loss\n0,1\n1,0.5\n")
    (run_dir / "config.yaml").write_text("model: {}\n")
    (predictions / "evaluation.json").write_text(json.dumps({
        "images": 3, "pooled_mean_iou": 0.4, "pooled_mean_dice": 0.55,
        "classes": {"sky": {"pooled_iou": 0.7}, "door": {"pooled_iou": 0.1}}}))
    row = datasets.result_row("labelmefacade", "default", 1, run_dir, predictions, 310.0, 9.0)
    assert (row["class"], row["test_score"], row["val_score"], row["test_dice"],
            row["val_dice"]) == ("mean IoU", 0.4, 0.5, 0.55, 0.6)
    assert row["test_iou"] == {"sky": 0.7, "door": 0.1} and row["epochs_run"] == 2
    assert row["wall_seconds"] == {"total": 305.2}  # train.py's account, kept with the row


@pytest.mark.slow
def test_peer_trains_through_train_py_and_predict_py_uses_it(isbi_dir, tmp_path):
    """benchmarks/peer_train.py: train.py's whole pipeline with sm.Unet as the network; the
    run folder it writes predicts with predict.py like any other."""
    import subprocess

    from unet_cbam.data.io import read_raw

    data = tmp_path / "data"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        for index in range(4):
            (data / kind / f"slice{index:02d}.png").symlink_to(
                isbi_dir / kind / f"slice{index:02d}.png")
    run_dir, out = tmp_path / "run", tmp_path / "out"
    root = BENCHMARKS.parent
    train = subprocess.run(
        [sys.executable, "-m", "benchmarks.peer_train", "--data", str(data),
         "--input-channels", "1", "--encoder", "resnet18", "--attention", "none",
         "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "64",
         "--output", str(run_dir), "--quiet"],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    import keras

    import unet_cbam

    model = unet_cbam.load_model(run_dir)
    names = [layer.name for layer in model.layers]
    assert "bn_data" in names  # segmentation-models' ResNet stem
    assert not any("cbam" in name or name.startswith("skip") for name in names)
    keras.backend.clear_session()
    from unet_cbam.cli.predict import main as predict_main

    assert predict_main(["--model", str(run_dir), "--input", str(data / "images"),
                         "--output", str(out), "--quiet"]) == 0
    masks = sorted(out.rglob("slice00*.png"))
    assert masks, sorted(p.name for p in out.rglob("*"))
    assert read_raw(masks[0]).shape[:2] == (512, 512)


def test_postprocess_holdout_scores_choices_on_the_other_half():
    """Each image: a 10x10 object found (0.8) plus a 4-pixel false blob (0.8). Plain
    thresholding keeps the blob (Dice 200/204 on any half); the tuned choice, made on the
    other half, removes components under a tenth of the 100-pixel median object."""
    module = load_script("postprocess_holdout")
    pairs = []
    for _ in range(8):
        probabilities = np.zeros((32, 32, 1), np.float32)
        truth = np.zeros((32, 32), np.uint8)
        probabilities[5:15, 5:15] = 0.8
        truth[5:15, 5:15] = 1
        probabilities[25:27, 25:27] = 0.8
        pairs.append((probabilities, truth))
    fingerprint = {"objects": {"foreground": {"p5_area": 100, "median_area": 100}}}
    scores = module.holdout_scores(pairs, ["background", "foreground"], fingerprint,
                                   "foreground", sizes=[2, 100], repeats=3,
                                   confidences=[0.0, 0.95])
    assert list(scores) == [module.PLAIN, "tuned on 2, any gain", "tuned on 2, confidence 0.95",
                            "tuned on 4 (all of A), any gain",
                            "tuned on 4 (all of A), confidence 0.95"]
    assert scores[module.PLAIN] == pytest.approx([200 / 204] * 3)
    assert all(values == [1.0] * 3 for key, values in scores.items() if key != module.PLAIN)


def test_the_results_index_lists_every_file_and_is_up_to_date(tmp_path, monkeypatch, capsys):
    index = load_script("index")
    text = index.render()
    for path in (BENCHMARKS / "results").glob("*/*.json"):
        if path.parent.name != "archive":
            assert f"`{path.name}`" in text, path
    assert index.main(["--check"]) == 0, "run python -m benchmarks.index"
    monkeypatch.setattr(index, "INDEX", tmp_path / "README.md")
    assert index.main(["--check"]) == 1  # a missing (or stale) index is caught
    assert "python -m benchmarks.index" in capsys.readouterr().err


def test_runtime_benchmark_measures_what_this_machine_runs_natively(monkeypatch):
    import importlib.util

    import unet_cbam.precision as precision

    runtime = load_script("runtime")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    chosen, skipped = runtime.available(list(runtime.VARIANTS))
    assert chosen == ["keras-float32", "onnxruntime-float32"]
    assert skipped == {"keras-bfloat16": "no bfloat16 units on this CPU (it would run emulated)",
                       "openvino-float32": "openvino not installed",
                       "openvino-bfloat16": "openvino not installed",
                       "openvino-int8": "openvino not installed"}
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert runtime.available(["keras-bfloat16"]) == (["keras-bfloat16"], {})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the units are there, oneDNN's are not
    assert runtime.available(["keras-bfloat16"])[0] == []


def test_runtime_profile_sorts_openvino_nodes_by_what_they_do():
    runtime = load_script("runtime")
    assert [runtime.category(kind) for kind in (
        "Convolution", "ConvolutionBackpropData", "FullyConnected", "Transpose", "Reorder",
        "Concat", "MaxPool", "ReduceMean", "Sigmoid", "Multiply", "FakeQuantize")] == [
        "convolution", "convolution", "convolution", "layout", "layout", "layout", "pooling",
        "reductions and activations", "reductions and activations", "element-wise and other",
        "element-wise and other"]


@pytest.mark.slow
def test_runtime_profile_shows_the_transposes_the_onnx_conversion_costs(isbi_run, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("tf2onnx")
    from unet_cbam.loading import load_run

    runtime = load_script("runtime")
    rows = runtime.profile(load_run(isbi_run), ["keras-float32", "openvino-float32"], 1,
                           tmp_path)
    by = {(row["variant"], row["conversion"]): row for row in rows}
    assert set(by) == {("keras-float32", "keras"), ("openvino-float32", "savedmodel"),
                       ("openvino-float32", "onnx")}
    assert by["keras-float32", "keras"]["vs_keras_float32"] == 1.0
    for key in (("openvino-float32", "savedmodel"), ("openvino-float32", "onnx")):
        shares = [by[key][f"{name} %"] for name in runtime.CATEGORIES]
        assert sum(shares) == pytest.approx(100, abs=0.5) and min(shares) >= 0
        assert by[key]["convolution %"] > 0 and by[key]["reductions and activations %"] > 0
    # What predict.py converts spends less on layout than tf2onnx's NHWC graph did.
    assert by["openvino-float32", "savedmodel"]["layout %"] < \
        by["openvino-float32", "onnx"]["layout %"]


def test_label_efficiency_splits_train_by_seed_as_links_and_adds_labels(tmp_path):
    script = load_script("label_efficiency")
    train = script.SHARED / "ctc-sim-nuclei" / "train"
    if not train.is_dir():
        pytest.skip("../shared/datasets/ctc-sim-nuclei is absent")
    everything = sorted(p.name for p in (train / "images").iterdir())
    labelled, unlabeled, count = script.fraction_split("ctc", 0.1, 1, tmp_path / "a")
    names = sorted(p.name for p in (labelled / "images").iterdir())
    rest = sorted(p.name for p in unlabeled.iterdir())
    assert count == len(names) == round(0.1 * len(everything))
    assert sorted(names + rest) == everything and not set(names) & set(rest)
    assert sorted(p.name for p in (labelled / "masks").iterdir()) == names
    assert all(p.is_symlink() for p in [*(labelled / "images").iterdir(), *unlabeled.iterdir()])
    again, _, _ = script.fraction_split("ctc", 0.1, 1, tmp_path / "b")
    other, _, _ = script.fraction_split("ctc", 0.1, 2, tmp_path / "c")
    assert sorted(p.name for p in (again / "images").iterdir()) == names
    assert sorted(p.name for p in (other / "images").iterdir()) != names

    chosen = rest[:2]
    more, fewer = script.add_labels(labelled, unlabeled, chosen, tmp_path / "round1")
    assert sorted(p.name for p in (more / "images").iterdir()) == sorted(names + chosen)
    assert sorted(p.name for p in (more / "masks").iterdir()) == sorted(names + chosen)
    assert sorted(p.name for p in fewer.iterdir()) == rest[2:]
    assert (more / "masks" / chosen[0]).resolve() == train / "masks" / chosen[0]


def test_label_efficiency_reports_the_gain_in_seed_standard_deviations():
    script = load_script("label_efficiency")
    rows = [{"data_set": "kvasir", "fraction": 0.1, "variant": variant, "test_dice": dice}
            for variant, values in (("supervised", (0.50, 0.52, 0.54)),
                                    ("semi-supervised", (0.55, 0.56, 0.57)))
            for dice in values]
    summary, = script.summarize(rows)
    assert summary["supervised_mean"] == 0.52 and summary["semi-supervised_mean"] == 0.56
    assert summary["gain"] == 0.04
    assert summary["gain_in_std"] == round(0.04 / np.std([0.50, 0.52, 0.54]), 2)
