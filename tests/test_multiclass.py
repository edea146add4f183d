"""Multi-class from colour masks, end to end: no class flag, the colours found, a short run
that learns, predict.py writing the same colours, and per-class scores that match an
independent count."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from unet_cbam.cli.evaluate import main as evaluate_main
from unet_cbam.cli.predict import main as predict_main
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_yaml
from unet_cbam.training import train

FACADE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "labelmefacade" / "train"
#: The data set's README: R:G:B of each class; the plan orders them by R, then G, then B.
COLOURS = [(0, 0, 0), (0, 0, 128), (0, 128, 0), (0, 128, 128), (128, 0, 0), (128, 0, 128),
           (128, 64, 0), (128, 128, 0), (128, 128, 128)]


def _link(stems: list[str], root: Path) -> Path:
    for kind, suffix in (("images", ".jpg"), ("masks", ".png")):
        (root / kind).mkdir(parents=True)
        for stem in stems:
            (root / kind / f"{stem}{suffix}").symlink_to(FACADE / kind / f"{stem}{suffix}")
    return root


def _labels(path: Path) -> np.ndarray:
    """An RGB mask -> class ids in COLOURS' order, by exact colour (-1: no class colour)."""
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    labels = np.full(packed.shape, -1)
    for index, (r, g, b) in enumerate(COLOURS):
        labels[packed == (r << 16 | g << 8 | b)] = index
    return labels


def test_colour_masks_train_predict_in_their_colours_and_score_per_class(tmp_path):
    if not (FACADE / "masks").is_dir():
        pytest.skip(f"LabelMeFacade not found at {FACADE}")
    stems = sorted(p.stem for p in (FACADE / "masks").glob("*.png"))
    data = _link(stems[:8], tmp_path / "train")
    held_out = _link(stems[8:10], tmp_path / "held_out")
    config = RunConfig(
        model=ModelConfig(depth=3, base_filters=8),          # num_classes: auto
        data=DataConfig(data=str(data), val_fraction=0.25, patch_size=96,
                        augmentation="light", scale=0.5),
        train=TrainConfig(epochs=6, steps_per_epoch=6, batch_size=4, warmup_epochs=0,
                          learning_rate=1e-2, seed=1))
    result = train(config, tmp_path / "run", progress=False)
    losses = result.history["loss"]
    assert losses[-1] < 0.9 * losses[0], losses
    saved = load_yaml(RunConfig, tmp_path / "run" / "config.yaml")
    assert saved.model.num_classes == 9 and saved.data.mask_encoding == "rgb"
    assert saved.data.class_colors == [list(c) for c in COLOURS]
    assert set(saved.data.class_sampling) == {f"class{i}" for i in range(1, 9)}

    out = tmp_path / "out"
    assert predict_main(["--model", str(tmp_path / "run"), "--input",
                         str(held_out / "images"), "--output", str(out), "--quiet"]) == 0
    assert evaluate_main(["--pred", str(out), "--truth", str(held_out / "masks"),
                          "--config", str(tmp_path / "run")]) == 0
    scores = json.loads((out / "evaluation.json").read_text())

    intersection, union = np.zeros(9), np.zeros(9)
    confusion = np.zeros((9, 9), np.int64)
    for stem in stems[8:10]:
        truth = _labels(held_out / "masks" / f"{stem}.png")
        predicted = _labels(out / f"{stem}.png")
        assert predicted.shape == truth.shape and (predicted >= 0).all()  # only class colours
        scored = truth >= 0        # edge pixels in no class colour are left out
        for label in range(9):
            t, p = (truth == label) & scored, (predicted == label) & scored
            intersection[label] += (t & p).sum()
            union[label] += (t | p).sum()
        np.add.at(confusion, (truth[scored], predicted[scored]), 1)
    assert scores["confusion_matrix"]["pixels"] == confusion.tolist()
    for label in range(9):
        entry = scores["classes"][f"class{label}"]
        if union[label]:
            assert entry["pooled_iou"] == pytest.approx(intersection[label] / union[label],
                                                        abs=1e-6)
