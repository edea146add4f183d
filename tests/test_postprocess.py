"""Post-processing steps, their choice on validation data, and predict.py applying them."""

import dataclasses

import numpy as np
import pytest

from helpers import make_untrained_run
from unet_cbam.config import InferenceConfig
from unet_cbam.data.io import IGNORE_LABEL
from unet_cbam.postprocess import (
    apply_steps,
    fill_holes,
    keep_largest,
    pooled_dice,
    postprocess,
    remove_small,
    size_candidates,
    tune,
)
from unet_cbam.run import RunFolder

FINGERPRINT = {"objects": {"foreground": {"p5_area": 20.0, "median_area": 400.0}}}


def _square(mask, top, left, side, value=1):
    mask[top:top + side, left:left + side] = value
    return mask


def test_steps_on_hand_made_masks():
    mask = np.zeros((20, 20), bool)
    _square(mask, 1, 1, 6)        # 36 px
    _square(mask, 10, 10, 3)      # 9 px
    mask[18, 18] = True           # 1 px
    assert remove_small(mask, 9).sum() == 45 and remove_small(mask, 10).sum() == 36
    assert keep_largest(mask).sum() == 36 and keep_largest(mask)[1, 1]
    assert not keep_largest(np.zeros((4, 4), bool)).any()
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False            # an enclosed hole
    ring[0, :] = True
    filled = fill_holes(ring)
    assert filled[4, 4] and filled.sum() == ring.sum() + 1
    assert not fill_holes(np.zeros((5, 5), bool)).any()
    # In a label image, removed pixels become background and only background is filled.
    labels = np.zeros((9, 9), np.uint16)
    labels[2:7, 2:7] = 1
    labels[4, 4] = 2              # another class inside: never overwritten
    labels[0, 0] = 1              # a speck
    result = apply_steps(labels, 1, {"min_size": 2, "fill_holes": True})
    assert result[0, 0] == 0 and result[4, 4] == 2 and (result == 1).sum() == 24


def _probabilities(labels, confidence=0.9):
    return np.where(labels[..., None] == 1, confidence, 1 - confidence).astype(np.float32)


def test_small_false_components_are_removed_when_that_raises_validation_dice():
    pairs = []
    for shift in range(3):
        truth = _square(np.zeros((48, 48), np.uint16), 10 + shift, 10, 20)  # 400 px
        prediction = truth.copy()
        for y, x in ((2, 40), (40, 2), (44, 44)):
            _square(prediction, y, x, 3)                                      # 9 px specks
        pairs.append((_probabilities(prediction), truth))
    tuned = tune(pairs, ["background", "foreground"], FINGERPRINT)
    steps = tuned["classes"]["foreground"]
    assert steps["min_size"] == 10 and not steps["largest_only"]  # the gentler size
    before, after = steps["validation_dice"]
    assert after == pytest.approx(1.0) and before < after
    assert tuned["threshold"] == 0.5


def test_small_true_objects_are_kept():
    pairs = []
    for shift in range(3):
        truth = _square(np.zeros((48, 48), np.uint16), 10 + shift, 10, 20)
        _square(truth, 40, 40, 3)  # a true 9-px object, as in the fingerprint
        # A false 2-px speck: removing components below 10 px would also drop the true one.
        prediction = truth.copy()
        prediction[2, 2:4] = 1
        pairs.append((_probabilities(prediction), truth))
    steps = tune(pairs, ["background", "foreground"], FINGERPRINT)["classes"]["foreground"]
    assert steps["min_size"] is None and not steps["largest_only"]


def test_threshold_is_tuned_for_binary_models_and_ignored_pixels_do_not_count():
    truth = _square(np.zeros((32, 32), np.uint16), 8, 8, 16)
    probabilities = np.where(truth[..., None] == 1, 0.42, 0.1).astype(np.float32)
    tuned = tune([(probabilities, truth)], ["background", "foreground"])
    assert 0.1 < tuned["threshold"] < 0.42
    assert tuned["threshold_dice"]["0.5"] == 0.0
    truth[0, :] = IGNORE_LABEL
    prediction = truth.copy()
    prediction[0, :] = 1  # predicted foreground where the truth is ignored: no penalty
    assert pooled_dice([(np.where(truth == IGNORE_LABEL, 1, prediction), truth)], 1) == 1.0
    assert size_candidates(FINGERPRINT, "foreground") == [10, 40]
    assert size_candidates(None, "foreground") == []


def test_predict_applies_the_saved_postprocessing_unless_told_not_to(tmp_path):
    from unet_cbam.predict import BatchPredictor, load_run

    folder = make_untrained_run(tmp_path / "run", channels=1)
    run = RunFolder(folder)
    inference = {"threshold": 0.3, "classes": {"foreground": {
        "min_size": 50, "largest_only": False, "fill_holes": True}}}
    run.write_config(dataclasses.replace(run.config, inference=inference))
    loaded = load_run(folder)
    raw = (np.random.default_rng(0).random((40, 56)) * 255).astype(np.uint8)
    plain = BatchPredictor(loaded, InferenceConfig(postprocess=False))
    labels_plain, probabilities = plain.predict_raw(raw, keep_probabilities=True)
    assert plain.threshold == 0.5
    tuned = BatchPredictor(loaded, InferenceConfig())
    assert tuned.threshold == 0.3
    labels, _ = tuned.predict_raw(raw)
    expected = postprocess((probabilities[..., 0] > 0.3).astype(np.uint16), inference,
                           ["background", "foreground"])
    np.testing.assert_array_equal(labels, expected)
    assert not np.array_equal(labels, labels_plain)
    given = BatchPredictor(loaded, InferenceConfig(threshold=0.7))
    assert given.threshold == 0.7  # an explicit threshold wins over the tuned one
