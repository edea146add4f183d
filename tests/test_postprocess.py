"""Post-processing steps, their choice on validation data, and predict.py applying them."""

import dataclasses

import numpy as np
import pytest

from helpers import make_untrained_run
from unet_cbam.config import InferenceConfig, TunedInference
from unet_cbam.data.io import IGNORE_LABEL
from unet_cbam.inference import probabilities_to_labels
from unet_cbam.postprocess import (
    apply_steps,
    dice_counts,
    fill_holes,
    gain_confidence,
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
    steps = tuned.classes["foreground"]
    assert steps["min_size"] == 10 and not steps["largest_only"]  # the gentler size
    before, after = steps["validation_dice"]
    assert after == pytest.approx(1.0) and before < after
    assert tuned.threshold == 0.5


def test_a_gain_carried_by_one_image_is_not_kept():
    # Image 0: a 400-px object plus ten false 9-px specks. Images 1-5: the same object
    # and a true 9-px one, both found. Removing components under 10 px raises the pooled
    # Dice (90 false pixels go, 45 true ones with them) but loses on five images of six:
    # any gain keeps it; the default rule (bootstrap confidence 0.95) does not.
    pairs = []
    for index in range(6):
        truth = _square(np.zeros((64, 64), np.uint16), 10, 10, 20)
        prediction = truth.copy()
        if index == 0:
            for k in range(10):
                _square(prediction, 40 + 6 * (k // 5), 4 + 12 * (k % 5), 3)
        else:
            _square(truth, 50, 50, 3)
            _square(prediction, 50, 50, 3)
        pairs.append((_probabilities(prediction), truth))
    names = ["background", "foreground"]
    labels = [(probabilities_to_labels(p, 0.5), t) for p, t in pairs]
    cleaned = [(apply_steps(p, 1, {"min_size": 10}), t) for p, t in labels]
    assert pooled_dice(labels, 1) == pytest.approx(2 * 2445 / (2535 + 2445))
    assert pooled_dice(cleaned, 1) == pytest.approx(2 * 2400 / (2400 + 2445))
    confidence = gain_confidence(dice_counts(labels, 1), dice_counts(cleaned, 1))
    assert 0.55 < confidence < 0.8  # wins only where image 0 is drawn: 1 - (5/6)^6 = 0.67
    assert tune(pairs, names, FINGERPRINT, confidence=0.0).classes["foreground"][
        "min_size"] == 10
    default = tune(pairs, names, FINGERPRINT)
    assert default.confidence == 0.95 and default.threshold == 0.5
    assert default.classes["foreground"] == {
        "min_size": None, "largest_only": False, "fill_holes": False,
        "validation_dice": [round(2 * 2445 / (2535 + 2445), 6)] * 2}


def test_gain_confidence_on_counts():
    before = np.array([[8, 10, 10], [5, 10, 10], [0, 0, 0]])
    assert gain_confidence(before, before) == 0.0          # never differs
    better = before + np.array([[1, 0, 0], [2, 0, 0], [0, 0, 0]])
    assert gain_confidence(before, better) == 1.0           # wins wherever it differs
    assert gain_confidence(better, before) == 0.0
    assert gain_confidence(before[:1], better[:1]) == 1.0   # one image


def test_small_true_objects_are_kept():
    pairs = []
    for shift in range(3):
        truth = _square(np.zeros((48, 48), np.uint16), 10 + shift, 10, 20)
        _square(truth, 40, 40, 3)  # a true 9-px object, as in the fingerprint
        # A false 2-px speck: removing components below 10 px would also drop the true one.
        prediction = truth.copy()
        prediction[2, 2:4] = 1
        pairs.append((_probabilities(prediction), truth))
    steps = tune(pairs, ["background", "foreground"], FINGERPRINT).classes["foreground"]
    assert steps["min_size"] is None and not steps["largest_only"]


def test_threshold_is_tuned_for_binary_models_and_ignored_pixels_do_not_count():
    truth = _square(np.zeros((32, 32), np.uint16), 8, 8, 16)
    probabilities = np.where(truth[..., None] == 1, 0.42, 0.1).astype(np.float32)
    tuned = tune([(probabilities, truth)], ["background", "foreground"])
    assert 0.1 < tuned.threshold < 0.42
    assert tuned.threshold_dice["0.5"] == 0.0
    truth[0, :] = IGNORE_LABEL
    prediction = truth.copy()
    prediction[0, :] = 1  # predicted foreground where the truth is ignored: no penalty
    assert pooled_dice([(np.where(truth == IGNORE_LABEL, 1, prediction), truth)], 1) == 1.0
    assert size_candidates(FINGERPRINT, "foreground") == [10, 40]
    assert size_candidates(None, "foreground") == []


def test_choices_are_judged_on_the_class_tune_on_names():
    # Cells (foreground, 1) cover most of the image; a thin membrane (background, 0) runs
    # between them, p(cell) 0.45 on it but 0.65 at its lower end; 22 cell pixels are
    # unsure too (p 0.6). Below 0.6 the membrane's end (20 px) is wrong; from 0.65 the
    # unsure cells (22 px) are: a trade the cells lose and the membrane wins.
    truth = np.ones((40, 40), np.uint16)
    truth[:, 19:21] = 0                    # membrane, 80 px
    probabilities = np.full((40, 40, 1), 0.9, np.float32)
    probabilities[:, 19:21] = 0.45
    probabilities[30:, 19:21] = 0.65
    probabilities[:11, :2] = 0.6
    pairs = [(probabilities, truth)]
    names = ["background", "foreground"]
    on_cells = tune(pairs, names)
    on_membrane = tune(pairs, names, tune_on="background")
    assert on_cells.tuned_on is None and on_membrane.tuned_on == "background"
    assert on_cells.threshold == 0.5
    assert on_membrane.threshold >= 0.65
    assert on_membrane.threshold_dice[f"{on_membrane.threshold:g}"] == \
        pytest.approx(2 * 80 / (2 * 80 + 22))
    before, after = on_membrane.classes["foreground"]["validation_dice"]
    assert before == pytest.approx(2 * 80 / (2 * 80 + 22)) and after >= before
    with pytest.raises(ValueError, match="tune_on 'cells'"):
        tune(pairs, names, tune_on="cells")
    with pytest.raises(ValueError, match="tune_on 'a'"):
        tune([(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint16))],
             ["a", "b", "c"], tune_on="a")


def test_hole_filling_is_kept_or_dropped_by_the_judged_class():
    # A membrane fragment the truth has inside a cell, and a false one of the same size
    # the model adds: filling both trades 25 missed cell pixels for 25 false ones, which
    # raises the cells' Dice (more true cell pixels) and lowers the membrane's.
    truth = np.ones((24, 24), np.uint16)
    truth[:, 11:13] = 0
    truth[3:8, 3:8] = 0                    # a true membrane fragment inside a cell
    prediction = truth.copy()
    prediction[16:21, 16:21] = 0           # a false one
    pairs = [(_probabilities(prediction), truth)]
    names = ["background", "foreground"]
    filled = apply_steps(prediction, 1, {"fill_holes": True})
    assert pooled_dice([(filled, truth)], 1) > pooled_dice([(prediction, truth)], 1) + 1e-3
    assert pooled_dice([(filled, truth)], 0) < pooled_dice([(prediction, truth)], 0) - 0.05
    assert tune(pairs, names).classes["foreground"]["fill_holes"]
    assert not tune(pairs, names, tune_on="background").classes["foreground"]["fill_holes"]


def test_predict_applies_the_saved_postprocessing_unless_told_not_to(tmp_path):
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

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
    expected = postprocess((probabilities[..., 0] > 0.3).astype(np.uint16),
                           TunedInference.from_config(inference), ["background", "foreground"])
    np.testing.assert_array_equal(labels, expected)
    assert not np.array_equal(labels, labels_plain)
    given = BatchPredictor(loaded, InferenceConfig(threshold=0.7))
    assert given.threshold == 0.7  # an explicit threshold wins over the tuned one
