import numpy as np
import pytest
from keras_objects import run_object_test

from unet_cbam.losses import SegmentationLoss, resolve_loss_name
from unet_cbam.metrics import SegmentationScore, segmentation_metrics

# labels (-1 = ignored) and sigmoid outputs for one 2x2 image
LABELS = np.array([[0, 1], [1, -1]])
PROBABILITIES = np.array([[0.2, 0.9], [0.3, 0.8]], np.float32)[None, ..., None]


def _targets(labels, num_labels=2):
    y = np.zeros(labels.shape + (num_labels + 1,), np.float32)
    for index, label in np.ndenumerate(labels):
        if label >= 0:
            y[index + (label,)] = 1
            y[index + (num_labels,)] = 1
    return y[None]


def _dice(gt, pr, smooth=1e-5):
    return (2 * (gt * pr).sum() + smooth) / (gt.sum() + pr.sum() + smooth)


def test_bce_is_a_mean_over_valid_pixels_only():
    expected = -np.mean([np.log(0.8), np.log(0.9), np.log(0.3)])
    value = float(SegmentationLoss("bce")(_targets(LABELS), PROBABILITIES))
    assert value == pytest.approx(expected, rel=1e-5)


def test_dice_averages_background_and_foreground_over_valid_pixels():
    foreground = np.array([0.2, 0.9, 0.3])
    expected = 1 - (_dice(np.array([1, 0, 0]), 1 - foreground)
                    + _dice(np.array([0, 1, 1]), foreground)) / 2
    value = float(SegmentationLoss("dice")(_targets(LABELS), PROBABILITIES))
    assert value == pytest.approx(expected, rel=1e-5)


def test_sum_and_class_weights():
    y, p = _targets(LABELS), PROBABILITIES
    total = float(SegmentationLoss("bce+dice")(y, p))
    assert total == pytest.approx(float(SegmentationLoss("bce")(y, p))
                                  + float(SegmentationLoss("dice")(y, p)), rel=1e-5)
    weighted = float(SegmentationLoss("ce", class_weights=[0.0, 1.0])(y, p))
    assert weighted == pytest.approx(-np.mean([0.0, np.log(0.9), np.log(0.3)]) * 1.0, rel=1e-5)


def test_multiclass_ce_matches_numpy():
    labels = np.array([[0, 2], [1, 2]])
    p = np.random.default_rng(0).random((1, 2, 2, 3)).astype(np.float32)
    p /= p.sum(-1, keepdims=True)
    expected = -np.mean([np.log(p[0, i, j, labels[i, j]]) for i in range(2) for j in range(2)])
    value = float(SegmentationLoss("ce")(_targets(labels, 3), p))
    assert value == pytest.approx(expected, rel=1e-5)


def test_loss_names():
    assert resolve_loss_name("auto", 1) == "bce+dice"
    assert resolve_loss_name("auto", 4) == "ce+dice"
    assert resolve_loss_name("focal + jaccard", 4) == "focal+jaccard"
    with pytest.raises(ValueError, match="unknown loss term"):
        resolve_loss_name("bce+dise", 1)


@pytest.mark.parametrize("loss", [
    SegmentationLoss("focal+dice", class_weights=None),
    SegmentationLoss("bce+dice", class_weights=[1.0, 3.0]),
    SegmentationLoss("ce+jaccard", class_weights=[0.5, 2.0]),
])
def test_registered_loss_contract(loss):
    value = run_object_test(loss, _targets(LABELS), PROBABILITIES)
    assert np.isfinite(value) and value > 0


@pytest.mark.parametrize("metric", [
    SegmentationScore(2, [1], "dice", name="dice_foreground"),
    SegmentationScore(2, [0, 1], "iou", threshold=0.25, name="mean_iou"),
])
def test_registered_metric_contract(metric):
    value = run_object_test(metric, _targets(LABELS), PROBABILITIES)
    assert 0.0 <= value <= 1.0


def test_per_class_scores_match_hand_computed_values():
    # pixels: (bg, pred bg) ok, (fg, pred fg) ok, (fg, pred bg) miss, ignored
    metrics = {m.name: m for m in segmentation_metrics(["membrane", "cell"])}
    for metric in metrics.values():
        metric.update_state(_targets(LABELS), PROBABILITIES)
    # membrane: TP 1, FP 1, FN 0 -> IoU 1/2, Dice 2/3; cell: TP 1, FN 1 -> same
    assert float(metrics["iou_membrane"].result()) == pytest.approx(0.5)
    assert float(metrics["dice_membrane"].result()) == pytest.approx(2 / 3)
    assert float(metrics["iou_cell"].result()) == pytest.approx(0.5)
    assert float(metrics["mean_dice"].result()) == pytest.approx(2 / 3)


def test_scores_accumulate_over_batches_not_average_them():
    metric = SegmentationScore(2, [1], "dice")
    # batch 1: 1 TP of 1 fg pixel; batch 2: 0 TP of 3 fg pixels -> dataset Dice 2*1/(2*1+0+3)
    metric.update_state(_targets(np.array([[1, 0]])), np.array([[[[0.9], [0.1]]]], np.float32))
    metric.update_state(_targets(np.array([[1, 1, 1]])),
                        np.array([[[[0.1], [0.1], [0.1]]]], np.float32))
    assert float(metric.result()) == pytest.approx(2 / 5)


def test_multiclass_argmax_and_absent_classes():
    labels = np.array([[0, 1], [1, 0]])
    p = np.zeros((1, 2, 2, 3), np.float32)
    p[0, 0, 0, 0] = p[0, 0, 1, 1] = p[0, 1, 0, 1] = p[0, 1, 1, 0] = 1.0
    mean = SegmentationScore(3, [0, 1, 2], "iou")
    mean.update_state(_targets(labels, 3), p)
    assert float(mean.result()) == pytest.approx(1.0)  # class 2 absent: not averaged in
