import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from unet_cbam.cli.evaluate import main as evaluate_main
from unet_cbam.data.io import IGNORE_LABEL, DataError, MaskCodec
from unet_cbam.evaluate import (
    confusion_matrix,
    evaluate_arrays,
    evaluate_folders,
    format_summary,
    infer_codec,
    mask_files,
    scores,
)


def test_scores_on_a_hand_made_mask():
    truth = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1]])
    prediction = np.array([[0, 1, 1, 1],
                           [0, 0, 0, 1]])
    matrix = confusion_matrix(truth, prediction, 2)
    np.testing.assert_array_equal(matrix, [[3, 1], [1, 3]])
    values = scores(matrix)
    # class 1: TP 3, FP 1, FN 1
    assert values["dice"][1] == pytest.approx(6 / 8)
    assert values["iou"][1] == pytest.approx(3 / 5)
    assert values["precision"][1] == pytest.approx(3 / 4)
    assert values["recall"][1] == pytest.approx(3 / 4)
    assert values["pixel_accuracy"] == pytest.approx(6 / 8)


def test_ignored_pixels_and_absent_classes():
    truth = np.array([[0, IGNORE_LABEL, 0]], dtype=np.uint16)
    prediction = np.array([[0, 2, 0]])
    matrix = confusion_matrix(truth, prediction, 3)
    assert matrix.sum() == 2
    values = scores(matrix)
    assert values["dice"][0] == 1.0
    assert math.isnan(values["dice"][1]) and math.isnan(values["dice"][2])


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), np.asarray(array, np.uint8))


def test_folders_with_other_tools_values_and_missing_pairs(tmp_path, capsys):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _write(truth, "a.png", [[0, 0, 255, 255], [0, 0, 255, 255]])
    _write(pred, "a.png", [[0, 1, 1, 1], [0, 0, 0, 1]])         # 0/1 against 0/255
    _write(truth, "b.png", [[255, 255], [255, 255]])
    _write(pred, "b.png", [[255, 255], [255, 0]])
    _write(truth, "c.png", [[0]])                                # no prediction
    _write(pred, "z.png", [[0]])                                 # no truth
    evaluation = evaluate_folders(pred, truth, MaskCodec("binary", 1), ["bg", "fg"])
    summary = evaluation.summary()
    assert summary["images"] == 2
    assert summary["missing_predictions"] == ["c"] and summary["missing_truths"] == ["z"]
    fg = summary["classes"]["fg"]
    assert fg["mean_dice"] == pytest.approx((6 / 8 + 6 / 7) / 2)
    # pooled: TP 3 + 3, FP 1 + 0, FN 1 + 1
    assert fg["pooled_dice"] == pytest.approx(12 / 15)
    bg = summary["classes"]["bg"]
    # image b: no true background but one predicted background pixel -> Dice 0
    assert bg["mean_dice"] == pytest.approx((6 / 8 + 0) / 2)
    assert bg["images"] == 2

    code = evaluate_main(["--pred", str(pred), "--truth", str(truth), "--num-classes", "1",
                          "--class-names", "bg", "fg"])
    assert code == 1  # missing pairs are reported
    output = capsys.readouterr().out
    assert "no prediction for 1 truth mask(s): c" in output
    report = json.loads((pred / "evaluation.json").read_text())
    assert report["classes"]["fg"]["pooled_dice"] == pytest.approx(12 / 15)
    rows = (pred / "evaluation.csv").read_text().splitlines()
    assert rows[0] == "file,truth,class,dice,iou,precision,recall,pixel_accuracy"
    assert len(rows) == 1 + 2 * 2


def test_predictions_pair_by_their_exact_stem_only(tmp_path):
    """A mask named b_mask.png (what predict.py once wrote) is not taken for b's: that
    guess scored another file silently; both sides are reported unpaired instead."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _write(truth, "a.png", [[0, 255]])
    _write(pred, "a.png", [[0, 255]])
    _write(truth, "b.png", [[255, 255]])
    _write(pred, "b_mask.png", [[255, 255]])
    summary = evaluate_folders(pred, truth, MaskCodec("binary", 1), ["bg", "fg"]).summary()
    assert summary["images"] == 1
    assert summary["missing_predictions"] == ["b"] and summary["missing_truths"] == ["b_mask"]


def test_multiclass_detection_and_unreadable_prediction(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _write(truth, "a.png", [[0, 1, 2]])
    _write(pred, "a.png", [[0, 1, 1]])
    _write(truth, "b.png", [[0, 1, 2]])
    pred.joinpath("b.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="instance labels or class ids"):  # 1x3: undecidable
        evaluate_folders(pred, truth)
    evaluation = evaluate_folders(pred, truth, infer_codec(mask_files(truth), num_classes=3))
    assert evaluation.class_names == ["class0", "class1", "class2"]
    summary = evaluation.summary()
    assert summary["classes"]["class1"]["mean_dice"] == pytest.approx(2 / 3)
    assert summary["classes"]["class2"]["mean_recall"] == 0.0
    assert len(summary["errors"]) == 1 and "b.png" in summary["errors"][0]


def test_ignore_value_and_threshold_apply_without_other_options(tmp_path, capsys):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _write(truth, "a.png", [[0, 200, 99, 99]])      # 99: ignore; 0/200 binary
    _write(pred, "a.png", [[0, 255, 255, 0]])
    code = evaluate_main(["--pred", str(pred), "--truth", str(truth), "--ignore-value", "99",
                          "--binary-threshold", "100"])
    assert code == 0, capsys.readouterr()
    report = json.loads((pred / "evaluation.json").read_text())
    assert report["classes"]["foreground"]["pooled_dice"] == 1.0  # the 99s are left out
    assert report["classes"]["background"]["images"] == 1


def test_indexed_without_num_classes_counts_the_classes(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _write(truth, "a.png", [[0, 1, 3]])
    _write(pred, "a.png", [[0, 1, 2]])
    assert evaluate_main(["--pred", str(pred), "--truth", str(truth),
                          "--mask-encoding", "indexed"]) == 0
    report = json.loads((pred / "evaluation.json").read_text())
    assert list(report["classes"]) == ["class0", "class1", "class2", "class3"]
    assert report["classes"]["class3"]["mean_recall"] == 0.0


def test_rgb_masks_with_their_colours(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    labels = np.array([[0, 1, 2, 2]])
    for folder in (truth, pred):
        folder.mkdir()
        cv2.imwrite(str(folder / "a.png"), colours[labels][..., ::-1])  # cv2 writes BGR
    assert evaluate_main(["--pred", str(pred), "--truth", str(truth), "--mask-encoding", "rgb",
                          "--class-colors", "0,0,0", "255,0,0", "0,0,255",
                          "--class-names", "bg", "red", "blue"]) == 0
    report = json.loads((pred / "evaluation.json").read_text())
    assert report["classes"]["blue"]["pooled_dice"] == 1.0
    with pytest.raises(SystemExit):
        evaluate_main(["--pred", str(pred), "--truth", str(truth), "--class-colors", "300,0"])


def _palette_png(path, labels):
    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    image.save(path)


def test_infer_codec_reads_every_sampled_file(tmp_path):
    truth = tmp_path / "truth"
    truth.mkdir()
    _palette_png(truth / "a.png", [[0, 1], [2, 1]])
    _palette_png(truth / "b.png", [[0, 1], [1, 1]])
    codec = infer_codec(mask_files(truth))
    assert (codec.encoding, codec.num_classes) == ("palette", 3)
    # one gray PNG among palette PNGs: the last file no longer decides
    cv2.imwrite(str(truth / "a0.png"), np.array([[0, 255]], np.uint8))
    with pytest.raises(ValueError, match=r"2 truth mask\(s\) are palette PNGs .* 1 are not "
                                         r"\(a0.png\)"):
        infer_codec(mask_files(truth))
    assert infer_codec(mask_files(truth), encoding="palette").encoding == "palette"


def test_binary_truth_with_an_ignore_value_stays_binary(tmp_path):
    truth = tmp_path / "truth"
    _write(truth, "a.png", [[0, 255, 128]])
    with pytest.raises(DataError, match="too large for class ids"):  # three values, no
        infer_codec(mask_files(truth))                              # hint: refused
    codec = infer_codec(mask_files(truth), ignore_value=128)
    assert (codec.encoding, codec.ignore_value, codec.num_labels) == ("binary", 128, 2)
    with pytest.raises(DataError, match="holds class id 255, but --num-classes is 3"):
        infer_codec(mask_files(truth), num_classes=3)  # 255 is no class id of 3


def test_format_summary_lists_scores_and_missing_files():
    evaluation = evaluate_arrays([("a", np.array([[0, 1]]), np.array([[0, 0]]))], ["bg", "fg"])
    evaluation.missing_truths = ["z"]
    text = format_summary(evaluation.summary())
    assert text.splitlines()[0] == "1 image(s)"
    assert "fg" in text and "no truth for 1 prediction(s): z" in text


def test_the_summary_holds_the_pooled_confusion_matrix():
    """Rows the true class, columns the predicted one, every image's valid pixels added."""
    truth_a, pred_a = np.array([[0, 1, 2, 2]]), np.array([[0, 2, 2, 1]])
    truth_b = np.array([[1, 1, IGNORE_LABEL]])
    pred_b = np.array([[1, 0, 2]])
    summary = evaluate_arrays([("a", truth_a, pred_a), ("b", truth_b, pred_b)],
                              ["bg", "x", "y"]).summary()
    matrix = summary["confusion_matrix"]
    assert matrix["classes"] == ["bg", "x", "y"]
    assert matrix["pixels"] == [[1, 0, 0], [1, 1, 1], [0, 1, 1]]  # the ignored pixel left out
    import json
    json.dumps(summary)  # a report: plain JSON
