"""What the masks encode, read from the masks: each kind planned right or refused clearly."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from unet_cbam.config import DataConfig
from unet_cbam.data.classes import detect_classes, resolve_classes
from unet_cbam.data.io import DataError, MaskCodec, read_mask
from unet_cbam.data.verify import Sample

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _samples(folder: Path, masks: list[np.ndarray], suffix: str = ".png") -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, mask in enumerate(masks):
        path = folder / f"m{index:02d}{suffix}"
        if mask.ndim == 3 and mask.shape[2] >= 3:  # RGB(A) given: OpenCV writes BGR(A)
            order = [2, 1, 0, 3][:mask.shape[2]]
            cv2.imwrite(str(path), mask[..., order])
        else:
            cv2.imwrite(str(path), mask)
        samples.append(Sample(path.stem, path, path))
    return samples


def _class_map(classes: int, seed: int, size=(48, 64)) -> np.ndarray:
    """A scene-like label image: blocks of every class, each class in several pieces."""
    rng = np.random.default_rng(seed)
    blocks = rng.permutation(np.resize(np.arange(classes), 24)).reshape(4, 6)
    return np.kron(blocks, np.ones((size[0] // 4, size[1] // 6), np.int64)).astype(np.uint8)


def _instances(seed: int, first: int, size=(64, 64)) -> np.ndarray:
    """Separate round objects with ids from ``first`` on (tracking ids: unique across the
    images, as in the Cell Tracking Challenge), their number differing from image to image."""
    mask = np.zeros(size, np.uint16)
    count = 4 + seed % 5
    for index in range(count):
        centre = (8 + 14 * (index % 4), 8 + 14 * (index // 4))
        cv2.circle(mask, centre, 5, first + index, -1)
    return mask


@pytest.mark.parametrize("classes", [3, 12])
def test_indexed_class_masks_give_their_class_count(tmp_path, classes):
    samples = _samples(tmp_path, [_class_map(classes, seed) for seed in range(10)])
    found = detect_classes(samples)
    assert (found.encoding, found.num_classes) == ("indexed", classes)
    assert f"indexed class masks, {classes} classes" in found.reason
    data, count, _ = resolve_classes(samples, DataConfig(), "auto")
    assert (data.mask_encoding, count) == ("indexed", classes)


def test_255_beside_small_class_ids_is_the_void_label(tmp_path):
    masks = []
    for seed in range(6):
        mask = _class_map(4, seed)
        mask[:, :3] = 255  # a void border
        masks.append(mask)
    found = detect_classes(_samples(tmp_path, masks))
    assert (found.encoding, found.num_classes, found.ignore_value) == ("indexed", 4, 255)
    assert "255 is the void label" in found.reason
    codec = MaskCodec("indexed", 4, ignore_value=255)
    labels = read_mask(tmp_path / "m00.png", codec)
    assert (labels[:, :3] == np.iinfo(np.uint16).max).all()


def test_two_values_and_void_are_binary_with_void_left_out(tmp_path):
    masks = [np.where(_class_map(2, seed) == 1, 1, 0).astype(np.uint8) for seed in range(4)]
    for mask in masks:
        mask[0] = 255
    found = detect_classes(_samples(tmp_path, masks))
    assert (found.encoding, found.num_classes, found.ignore_value) == ("binary", 1, 255)


def test_colour_masks_get_their_colours_in_rgb_order_and_edge_colours_are_left_out(tmp_path):
    colours = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
    masks = []
    for seed in range(9):
        rgb = colours[_class_map(4, seed)]
        rgb[10, 5:9] = (100, 0, 0)  # antialiasing on the edge between black and red
        masks.append(rgb)
    samples = _samples(tmp_path, masks)
    found = detect_classes(samples)
    assert found.encoding == "rgb" and found.num_classes == 4
    assert found.colors == [[0, 0, 0], [0, 0, 200], [0, 200, 0], [200, 0, 0]]  # sorted R:G:B
    assert found.ignore_edges and list(found.edge_colors) == [(100, 0, 0)]
    pixels, files = found.edge_colors[(100, 0, 0)]
    assert pixels == 4 * 9 and files[0].endswith("m00.png")
    data, count, _ = resolve_classes(samples, DataConfig(), "auto")
    codec = MaskCodec.from_data_config(data, count)
    labels = read_mask(samples[0].mask_path, codec)
    ignored = labels == np.iinfo(np.uint16).max
    assert ignored.sum() == 4  # the edge pixels, not refused, not a class
    expected = _class_map(4, 0)
    remap = {0: 0, 1: 3, 2: 2, 3: 1}  # class ids in the colours' R:G:B order
    assert (labels[~ignored] == np.vectorize(remap.get)(expected)[~ignored]).all()


def test_a_colour_region_that_is_no_class_is_refused_naming_the_file(tmp_path):
    colours = np.array([[0, 0, 0], [200, 0, 0]], np.uint8)
    masks = [colours[_class_map(2, seed)] for seed in range(9)]
    masks[4][10:20, 10:20] = (50, 60, 70)
    with pytest.raises(DataError) as error:
        detect_classes(_samples(tmp_path, masks))
    (problem,) = error.value.problems
    assert problem.startswith(str(tmp_path / "m04.png"))
    assert "colour (50, 60, 70) (100 pixels) is in no other mask" in problem
    assert "--class-colors" in problem and "--ignore-color 50 60 70" in problem


def test_instance_labels_are_foreground_against_background(tmp_path):
    found = detect_classes(_samples(tmp_path, [_instances(seed, 1 + 10 * seed)
                                               for seed in range(8)]))
    assert (found.encoding, found.num_classes) == ("binary", 1)
    assert "instance labels" in found.reason


@pytest.mark.parametrize("values, suffix, why", [
    ((0, 255), ".png", "values 0/255: binary masks"),
    ((0, 1), ".png", "values 0/1: binary masks"),
    ((0, 255), ".jpg", "JPEG masks"),
])
def test_binary_and_jpeg_masks_stay_binary(tmp_path, values, suffix, why):
    masks = [np.where(_class_map(2, seed) == 1, values[1], values[0]).astype(np.uint8)
             for seed in range(4)]
    found = detect_classes(_samples(tmp_path, masks, suffix))
    assert (found.encoding, found.num_classes) == ("binary", 1) and why in found.reason


def test_a_value_no_other_mask_has_is_refused_naming_the_file(tmp_path):
    masks = [_class_map(3, seed) for seed in range(9)]
    masks[6][:8, :8] = 7
    with pytest.raises(DataError) as error:
        detect_classes(_samples(tmp_path, masks))
    (problem,) = error.value.problems
    assert problem.startswith(f"{tmp_path / 'm06.png'}: value 7 is in no other mask of 9")
    assert "--num-classes 8" in problem and "--ignore-value 7" in problem


def test_a_class_count_that_disagrees_with_the_masks_is_refused(tmp_path):
    samples = _samples(tmp_path, [_class_map(5, seed) for seed in range(4)])
    with pytest.raises(DataError, match="holds class id 4, but --num-classes is 3"):
        resolve_classes(samples, DataConfig(), 3)
    data, count, _ = resolve_classes(samples, DataConfig(), 6)  # more: a class never seen
    assert count == 6 and data.mask_encoding == "indexed"


def test_values_that_could_be_classes_or_instances_are_refused(tmp_path):
    """Every mask holds the same 3 values, each a single object: ask, never guess."""
    masks = []
    for _ in range(4):
        mask = np.zeros((40, 40), np.uint8)
        for label in (1, 2, 3):
            cv2.circle(mask, (8 + 10 * label, 20), 4, label, -1)
        masks.append(mask)
    with pytest.raises(DataError, match="instance labels or class ids. Give --mask-encoding "
                                        "binary for instances, or --num-classes 4 for classes"):
        detect_classes(_samples(tmp_path, masks))


def test_a_transparent_rgba_mask_is_refused(tmp_path):
    mask = np.zeros((16, 16, 4), np.uint8)
    mask[..., 0], mask[..., 3] = 200, 255
    mask[:4, :4, 3] = 0
    with pytest.raises(DataError, match="m00.png: RGBA mask with a transparent part"):
        detect_classes(_samples(tmp_path, [mask]))


@pytest.mark.parametrize("folder, threshold, reason", [
    ("isbi2012-membrane", 0, "values 0/255: binary masks"),
    ("kvasir-seg/train", 127, "JPEG masks"),
    ("ctc-sim-nuclei/train", 0, "instance labels"),
])
def test_the_binary_data_sets_are_planned_as_before(folder, threshold, reason):
    """ISBI (0/255), Kvasir-SEG (JPEG masks) and CTC (16-bit instance labels): one class,
    foreground above the same threshold as before classes were read from the masks."""
    from unet_cbam.config import ModelConfig
    from unet_cbam.data.verify import find_pairs, resolve_binary_threshold

    root = SHARED / folder
    if not (root / "masks").is_dir():
        pytest.skip(f"{root} not found")
    samples, _ = find_pairs(root / "images", root / "masks")
    data, count, found = resolve_classes(samples, DataConfig(), ModelConfig().num_classes)
    assert (data.mask_encoding, count) == ("binary", 1) and reason in found.reason
    assert resolve_binary_threshold(samples, data, count)[0].binary_threshold == threshold


def test_labelmefacade_colour_masks_give_its_nine_classes():
    root = SHARED / "labelmefacade" / "train"
    if not (root / "masks").is_dir():
        pytest.skip(f"{root} not found")
    from unet_cbam.data.verify import find_pairs

    samples, _ = find_pairs(root / "images", root / "masks")
    found = detect_classes(samples)
    assert (found.encoding, found.num_classes) == ("rgb", 9)
    assert found.colors == [[0, 0, 0], [0, 0, 128], [0, 128, 0], [0, 128, 128], [128, 0, 0],
                            [128, 0, 128], [128, 64, 0], [128, 128, 0], [128, 128, 128]]


def test_labelmefacade_with_no_flag_is_planned_as_with_its_classes_given_by_hand(tmp_path):
    """Auto must equal the hand-flagged run: the same model, data settings and plan."""
    root = SHARED / "labelmefacade" / "train"
    if not (root / "masks").is_dir():
        pytest.skip(f"{root} not found")
    from unet_cbam.config import ModelConfig, RunConfig, to_dict
    from unet_cbam.data.prepare import prepare_data

    data = tmp_path / "facade"
    for kind, suffix in (("images", ".jpg"), ("masks", ".png")):
        (data / kind).mkdir(parents=True)
        for path in sorted((root / kind).glob(f"*{suffix}"))[:6]:
            (data / kind / path.name).symlink_to(path)
    colours = [[0, 0, 0], [0, 0, 128], [0, 128, 0], [0, 128, 128], [128, 0, 0],
               [128, 0, 128], [128, 64, 0], [128, 128, 0], [128, 128, 128]]
    auto = prepare_data(RunConfig(data=DataConfig(data=str(data))), progress=False).config
    by_hand = prepare_data(RunConfig(
        model=ModelConfig(num_classes=9),
        data=DataConfig(data=str(data), mask_encoding="rgb", class_colors=colours)),
        progress=False).config
    assert to_dict(auto.model) == to_dict(by_hand.model) and auto.model.num_classes == 9
    assert to_dict(auto.data) == to_dict(by_hand.data)
    assert auto.data.class_colors == colours
    # The plan says where the classes came from; the settings it decided are the same.
    decided = {"mask_encoding", "num_classes", "class_colors"}
    assert decided <= set(auto.plan) and not decided & set(by_hand.plan)
    assert {k: v for k, v in auto.plan.items() if k not in decided} == by_hand.plan
