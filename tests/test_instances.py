"""Instances, object-level F1, and the uncertainty and instance outputs of predict.py."""

import json

import cv2
import numpy as np
import pytest

from helpers import make_untrained_run
from unet_cbam.inference import predictive_entropy
from unet_cbam.instances import (
    as_instances,
    label_instances,
    match_counts,
    min_distance_for,
    object_scores,
)


def _disks(centres, radius=10, shape=(64, 96)):
    mask = np.zeros(shape, np.uint8)
    for x, y in centres:
        cv2.circle(mask, (x, y), radius, 1, -1)
    return mask.astype(bool)


def test_components_and_watershed_on_touching_disks():
    apart = _disks([(20, 20), (70, 40)])
    labels = label_instances(apart)
    assert labels.dtype == np.uint16 and labels.max() == 2
    assert set(np.unique(labels[apart])) == {1, 2} and not labels[~apart].any()
    touching = _disks([(30, 32), (47, 32)])  # overlapping by 3 pixels: one component
    assert label_instances(touching).max() == 1
    split = label_instances(touching, split=True, min_distance=5)
    assert split.max() == 2
    assert (split > 0).sum() == touching.sum()  # every foreground pixel keeps a label
    assert split[32, 30] != split[32, 47]
    # A thin component keeps every pixel labelled, apart from the disks' labels.
    thin = touching.copy()
    thin[2, 80:90] = True
    labels = label_instances(thin, split=True, min_distance=5)
    assert (labels > 0).sum() == thin.sum()
    assert not set(np.unique(labels[2, 80:90])) & {labels[32, 30], labels[32, 47]}


def test_object_matching_counts_are_exact():
    true = np.zeros((20, 20), np.uint16)
    true[0:5, 0:5] = 1       # found exactly
    true[10:14, 10:14] = 2   # found at IoU 12/16 = 0.75
    true[0:3, 15:18] = 7     # missed
    predicted = np.zeros_like(true)
    predicted[0:5, 0:5] = 3
    predicted[10:14, 10:13] = 1
    predicted[17:19, 0:2] = 9  # a false object
    predicted[10:14, 16:20] = 4  # overlaps nothing
    assert match_counts(predicted, true) == (2, 2, 1)
    assert match_counts(np.zeros_like(true), true) == (0, 0, 3)
    scores = object_scores([(predicted, true), (true, true)])
    assert (scores["true_positives"], scores["false_positives"],
            scores["false_negatives"]) == (5, 2, 1)
    assert scores["f1"] == pytest.approx(10 / 13)
    assert scores["precision"] == pytest.approx(5 / 7) and scores["recall"] == 5 / 6


def test_true_masks_become_instances_and_seed_spacing_follows_the_fingerprint():
    binary = _disks([(20, 20), (70, 40)]).astype(np.uint8) * 255
    assert as_instances(binary).max() == 2
    labels = np.zeros((8, 8), np.uint16)
    labels[:2, :2], labels[5:, 5:] = 4, 9
    assert as_instances(labels) is labels
    assert min_distance_for({"objects": {"foreground": {"median_area": 1600.0}}}) == 11
    assert min_distance_for(None) == 5


def test_predictive_entropy():
    binary = np.array([[[0.5], [1.0], [0.0], [0.9]]], np.float32)
    entropy = predictive_entropy(binary)
    assert entropy.shape == (1, 4)
    np.testing.assert_allclose(entropy[0, :3], [1.0, 0.0, 0.0], atol=1e-6)
    assert entropy[0, 3] == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2),
                                          rel=1e-5)
    softmax = np.array([[[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]], np.float32)
    np.testing.assert_allclose(predictive_entropy(softmax)[0], [1.0, 0.0], atol=1e-6)


def test_predict_writes_uncertainty_and_instances_and_scores_objects(tmp_path, capsys):
    from unet_cbam.cli.predict import main as predict_main
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    run = make_untrained_run(tmp_path / "run", channels=1)
    images, truth = tmp_path / "images", tmp_path / "truth"
    images.mkdir()
    truth.mkdir()
    rng = np.random.default_rng(0)
    raw = (rng.random((40, 48)) * 255).astype(np.uint8)
    cv2.imwrite(str(images / "a.png"), raw)
    cv2.imwrite(str(truth / "a.png"), _disks([(12, 12), (34, 26)], 6, (40, 48)).astype(
        np.uint8) * 255)
    out = tmp_path / "out"
    assert predict_main(["--model", str(run), "--input", str(images), "--output", str(out),
                         "--save-uncertainty", "--instances", "watershed", "--truth",
                         str(truth), "--quiet", "--no-postprocess"]) == 0
    assert "objects (IoU > 0.5) over 1 image(s): F1" in capsys.readouterr().out
    uncertainty = cv2.imread(str(out / "uncertainty" / "a.png"), cv2.IMREAD_UNCHANGED)
    instances = cv2.imread(str(out / "instances" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert uncertainty.dtype == np.uint16 and instances.dtype == np.uint16
    predictor = BatchPredictor(load_run(run), InferenceConfig(postprocess=False))
    labels, probabilities = predictor.predict_raw(raw, keep_probabilities=True)
    np.testing.assert_array_equal(
        uncertainty, np.round(predictive_entropy(probabilities) * 65535).astype(np.uint16))
    np.testing.assert_array_equal(instances > 0, labels == 1)
    saved = json.loads((out / "instance_evaluation.json").read_text())
    assert saved["images"] == 1 and saved["false_negatives"] + saved["true_positives"] == 2


def test_instances_need_a_binary_model(tmp_path):
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor, OutputOptions

    run = make_untrained_run(tmp_path / "run", channels=1, num_classes=3)
    with pytest.raises(ValueError, match="--instances needs a binary model; this one has 3"):
        BatchPredictor(load_run(run), InferenceConfig(), tmp_path / "out",
                       OutputOptions(instances="components"))


def test_evaluate_command_scores_instance_folders(tmp_path, capsys):
    from unet_cbam.cli.evaluate import main as evaluate_main

    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    true = np.zeros((20, 20), np.uint16)
    true[0:5, 0:5], true[10:14, 10:14], true[0:3, 15:18] = 1, 2, 7
    predicted = np.zeros_like(true)
    predicted[0:5, 0:5], predicted[10:14, 10:13], predicted[17:19, 0:2] = 3, 1, 9
    cv2.imwrite(str(tmp_path / "pred" / "a.png"), predicted)
    cv2.imwrite(str(tmp_path / "truth" / "a.png"), true)
    binary = (true > 0).astype(np.uint8) * 255  # numbered by connected components
    cv2.imwrite(str(tmp_path / "pred" / "b.png"), predicted)
    cv2.imwrite(str(tmp_path / "truth" / "b.png"), binary)
    assert evaluate_main(["--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                          "--instances"]) == 0
    assert "F1 0.6667" in capsys.readouterr().out  # 4 matched, 2 false, 2 missed
    saved = json.loads((tmp_path / "pred" / "instance_evaluation.json").read_text())
    assert (saved["true_positives"], saved["false_positives"], saved["false_negatives"]) \
        == (4, 2, 2)
    (tmp_path / "truth" / "c.png").write_bytes((tmp_path / "truth" / "a.png").read_bytes())
    assert evaluate_main(["--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                          "--instances"]) == 1  # c has no prediction
