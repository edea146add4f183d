import json

import cv2
import numpy as np
import pytest

from helpers import write_pairs
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, save_yaml
from unet_cbam.explore import (
    config_rows,
    inspect_data,
    load_pairs,
    markdown_table,
    metrics_rows,
    pool_channel_gates,
    run_histories,
    run_summaries,
    threshold_sweep,
    worst_first,
)


def test_inspect_data_reports_instead_of_raising(tmp_path):
    write_pairs(tmp_path, count=3, size=(10, 10), mask_values=(0, 255))
    masks = tmp_path / "masks"
    cv2.imwrite(str(masks / "p0.png"), np.array([[255] * 10] * 5 + [[0] * 10] * 5, np.uint8))
    (masks / "p2.png").unlink()
    overview = inspect_data(DataConfig(data=str(tmp_path)), ModelConfig(num_classes=1,
                                                                        input_channels=3))
    assert len(overview.report.samples) == 2
    assert any("p2.png: no mask" in problem for problem in overview.problems)
    table = dict(overview.table())
    assert table["usable pairs"] == "2"
    assert table["image sizes (w x h)"] == "10x10 (2)"
    assert table["bit depths"] == "8-bit (2)" and table["channels"] == "3 (2)"
    p1 = cv2.imread(str(masks / "p1.png"), cv2.IMREAD_UNCHANGED)
    expected_foreground = (50 + int((p1 > 0).sum())) / 200
    assert overview.class_fractions["foreground"] == pytest.approx(expected_foreground)
    pairs = load_pairs(overview, 5, channels=1)
    assert [stem for stem, _, _ in pairs] == ["p0", "p1"]
    assert pairs[0][1].shape == (10, 10, 1) and pairs[0][2].dtype == np.uint16


def test_inspect_data_with_an_unusable_encoding(tmp_path):
    write_pairs(tmp_path, count=1)
    cv2.imwrite(str(tmp_path / "masks" / "p0.png"), np.dstack([np.full((32, 40), v, np.uint8)
                                                               for v in (0, 50, 200)]))
    overview = inspect_data(DataConfig(data=str(tmp_path)), ModelConfig(num_classes=2))
    assert overview.codec is None
    assert "give --class-colors" in overview.problems[0]


def test_threshold_sweep_is_exact():
    probability = np.array([[0.2, 0.6, 0.8, 0.4]])
    truth = np.array([[0, 1, 1, 1]], np.uint16)
    sweep = threshold_sweep([probability], [truth], [0.3, 0.5, 0.7])
    # t=0.3: pred 0,1,1,1 -> perfect; t=0.5: 0,1,1,0 -> fg 2*2/(2+3), bg 2*1/(2+1)
    np.testing.assert_allclose(sweep["dice"][0], [1.0, 1.0])
    np.testing.assert_allclose(sweep["dice"][1], [2 / 3, 4 / 5])
    np.testing.assert_allclose(sweep["dice"][2], [2 * 1 / (1 + 3), 2 * 1 / (1 + 3)])


def test_worst_first_and_tables():
    rows = [{"file": "a", "class": "fg", "dice": 0.9}, {"file": "b", "class": "fg", "dice": 0.2},
            {"file": "c", "class": "fg", "dice": float("nan")},
            {"file": "a", "class": "bg", "dice": 0.1}]
    assert [r["file"] for r in worst_first(rows, "fg")] == ["b", "a", "c"]
    assert markdown_table([["x|y", 0.123456]], ["name", "v"]) == \
        "| name | v |\n|---|---|\n| x\\|y | 0.1235 |"
    rows = config_rows(RunConfig())
    assert ("model", "attention", "cbam") in rows and ("train", "epochs", 100) in rows
    metrics = {"classes": {"bg": {"iou": 0.5, "dice": 0.6}}, "mean_iou": 0.5, "mean_dice": 0.6}
    assert metrics_rows(metrics) == [("bg", 0.5, 0.6), ("mean", 0.5, 0.6)]


def test_pool_channel_gates():
    maps = [{1: {"channel": np.array([0.1, 0.2]), "spatial": np.zeros((2, 2))}},
            {1: {"channel": np.array([0.3, 0.4])}, 2: {"spatial": np.zeros((1, 1))}}]
    pooled = pool_channel_gates(maps)
    assert list(pooled) == [1]
    np.testing.assert_array_equal(pooled[1]["channel"], [0.1, 0.2, 0.3, 0.4])


def test_run_histories_and_summaries(tmp_path):
    runs = []
    for parent, attention in (("a", "none"), ("b", "cbam")):
        run = tmp_path / parent / "run"
        run.mkdir(parents=True)
        save_yaml(RunConfig(model=ModelConfig(num_classes=1, attention=attention)),
                  run / "config.yaml")
        (run / "history.csv").write_text("epoch,val_mean_dice\n0,0.5\n1,0.6\n")
        (run / "metrics.json").write_text(json.dumps(
            {"best_epoch": 2, "mean_iou": 0.4, "mean_dice": 0.6, "classes": {}}))
        runs.append(run)
    histories = run_histories(runs)
    assert list(histories) == ["run", "b/run"]
    assert histories["run"]["val_mean_dice"] == [0.5, 0.6]
    rows = run_summaries(runs)
    assert rows[1] == ["b/run", "unet", "cbam", "paper", 2, 0.4, 0.6]
