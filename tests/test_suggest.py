"""unet-cbam suggest: uncertainty ranking, diversity, the CSV and the contact sheet."""

import csv
import shutil

import cv2
import keras
import numpy as np
import pytest

from unet_cbam.cli.main import main as unet_cbam_main
from unet_cbam.config import DataConfig, ModelConfig, RunConfig
from unet_cbam.data.io import MaskCodec
from unet_cbam.loading import LoadedRun
from unet_cbam.suggest import CSV_NAME, SHEET_NAME, rank, suggest, uncertainty_maps


def _identity_run(tmp_path):
    """A 'model' whose foreground probability is the pixel's intensity in [0, 1]: a
    mid-grey pixel is undecided, a black or white one certain."""
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Identity()])
    config = RunConfig(model=ModelConfig(num_classes=1, depth=2, input_channels=1),
                       data=DataConfig(mask_encoding="binary", mask_values=[0, 255]))
    codec = MaskCodec.from_data_config(config.data, 1)
    return LoadedRun(model, config, codec, ["background", "foreground"], tmp_path)


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return path


def _rows(output):
    with (output / CSV_NAME).open() as stream:
        return list(csv.DictReader(stream))


def test_uncertainty_maps_are_the_entropy_and_the_views_disagreement(tmp_path):
    run = _identity_run(tmp_path)
    image = np.zeros((32, 32, 1), np.float32)
    image[:, :16] = 0.5  # undecided on the left, certain background on the right
    mean, entropy, disagreement = uncertainty_maps(image, run, _inference())
    np.testing.assert_allclose(mean[..., 0], image[..., 0], atol=1e-6)
    np.testing.assert_allclose(entropy[:, :16], 1.0, atol=1e-6)
    assert entropy[:, 16:].max() < 1e-6
    assert disagreement.max() < 1e-6  # an equivariant model: every view agrees
    # Two members that contradict each other: one says p, the other 1 - p. Where p is 1
    # each is certain and their mean undecided: entropy 1, all of it disagreement; where
    # p is 0.5 both are undecided: entropy 1, no disagreement.
    inverse = keras.Sequential([keras.Input((None, None, 1)),
                                keras.layers.Rescaling(scale=-1.0, offset=1.0)])
    run.members = [run.model, inverse]
    run.scales = [1.0, 1.0]
    image[:, 16:] = 1.0
    _, entropy, disagreement = uncertainty_maps(image, run, _inference(), views=2)
    np.testing.assert_allclose(entropy, 1.0, atol=1e-5)
    np.testing.assert_allclose(disagreement[:, 16:], 1.0, atol=1e-5)
    np.testing.assert_allclose(disagreement[:, :16], 0.0, atol=1e-5)


def _inference():
    from unet_cbam.config import InferenceConfig

    return InferenceConfig(tile_size=32, overlap=0.25, batch_size=4)


def test_an_ambiguous_image_ranks_above_a_trivial_one_and_every_input_is_listed_once(
        tmp_path):
    run = _identity_run(tmp_path)
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    trivial = _write(images / "a_trivial.png", np.zeros((40, 48), np.uint8))
    ambiguous = _write(images / "b_ambiguous.png",
                       (128 + rng.integers(-8, 8, (40, 48))).astype(np.uint8))
    half = np.zeros((40, 48), np.uint8)
    half[:, :20] = 128
    partly = _write(images / "c_partly.png", half)
    broken = images / "d_broken.png"
    broken.write_bytes(b"not a png")
    output = tmp_path / "out"
    output.mkdir()
    ranked = suggest(run, [trivial, ambiguous, partly, broken], output, 2, root=images,
                     inference=_inference(), progress=False)
    assert [item.path for item in ranked] == [ambiguous, partly, trivial, broken]
    rows = _rows(output)
    assert [row["image"] for row in rows] == ["b_ambiguous.png", "c_partly.png",
                                              "a_trivial.png", "d_broken.png"]
    assert [row["rank"] for row in rows] == ["1", "2", "3", ""]
    assert [row["chosen"] for row in rows] == ["yes", "yes", "no", "no"]
    assert rows[3]["reason"].startswith(f"skipped: {broken}: not a readable image")
    assert float(rows[0]["score"]) > 0.99 and float(rows[2]["score"]) < 1e-3
    assert cv2.imread(str(output / SHEET_NAME)) is not None


def test_a_near_duplicate_is_ranked_after_every_distinct_image(tmp_path):
    run = _identity_run(tmp_path)
    images = tmp_path / "images"
    y, x = np.mgrid[0:48, 0:48]
    scene = (100 + 50 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.uint8)
    first = _write(images / "frame1.png", scene)
    second = _write(images / "frame2.png", np.clip(scene.astype(int) + 1, 0, 255)
                    .astype(np.uint8))  # the next frame: nearly the same, as uncertain
    other = np.zeros((48, 48), np.uint8)
    other[::6] = 110  # another scene, less uncertain than either frame
    distinct = _write(images / "other.png", other)
    output = tmp_path / "out"
    output.mkdir()
    ranked = suggest(run, [first, second, distinct], output, 2, root=images,
                     inference=_inference(), progress=False)
    # frame2 is a shade nearer mid-grey, so a little more uncertain than frame1; both far
    # more than other.png. By score alone: frame2, frame1, other.
    assert [item.path.name for item in rank(ranked, 1.01)] == ["frame2.png", "frame1.png",
                                                               "other.png"]
    assert [item.path.name for item in ranked] == ["frame2.png", "other.png", "frame1.png"]
    assert ranked[2].near[0] == second and ranked[2].near[1] > 0.99
    rows = _rows(output)
    assert rows[2]["near_duplicate_of"] == "frame2.png"
    assert rows[2]["reason"].startswith("near-duplicate of frame2.png")
    assert [row["chosen"] for row in rows] == ["yes", "yes", "no"]


def test_suggest_from_the_command_line_on_a_trained_run(isbi_run, isbi_dir, tmp_path):
    images = tmp_path / "unlabeled"
    images.mkdir()
    for index in (20, 21, 22):
        shutil.copy(isbi_dir / "images" / f"slice{index:02d}.png", images)
    (images / "broken.png").write_bytes(b"")
    output = tmp_path / "suggestions"
    code = unet_cbam_main(["suggest", "--model", str(isbi_run), "--images", str(images),
                           "--count", "2", "--output", str(output), "--views", "2",
                           "--quiet"])
    assert code == 1  # one input skipped
    rows = _rows(output)
    assert sorted(row["image"] for row in rows) == ["broken.png", "slice20.png",
                                                    "slice21.png", "slice22.png"]
    assert [row["chosen"] for row in rows].count("yes") == 2
    assert rows[-1]["image"] == "broken.png" and "empty file" in rows[-1]["reason"]
    scores = [float(row["score"]) for row in rows[:3]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert (output / SHEET_NAME).is_file()
    # Earlier suggestions are never overwritten.
    assert unet_cbam_main(["suggest", "--model", str(isbi_run), "--images", str(images),
                           "--count", "2", "--output", str(output), "--quiet"]) == 2


def test_suggest_refuses_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        unet_cbam_main(["suggest", "--model", str(tmp_path), "--images", str(tmp_path),
                        "--count", "0"])
    assert "--count 0: must be at least 1" in capsys.readouterr().err
