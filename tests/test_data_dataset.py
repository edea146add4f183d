import numpy as np
import pytest

from unet_cbam.data.dataset import (
    PairSource,
    PatchDraw,
    split_samples,
    training_dataset,
    validation_dataset,
)
from unet_cbam.data.io import IGNORE_LABEL, MaskCodec
from unet_cbam.data.verify import Sample


def _samples(n):
    return [Sample(f"s{i:02d}", None, None) for i in range(n)]


def test_split_is_deterministic_and_disjoint():
    samples = _samples(20)
    train, val = split_samples(samples, 0.25, seed=7)
    again = split_samples(list(reversed(samples)), 0.25, seed=7)
    assert (train, val) == again
    assert len(val) == 5 and len(train) == 15
    assert not {s.stem for s in train} & {s.stem for s in val}
    assert split_samples(samples, 0.25, seed=8)[1] != val
    assert split_samples(_samples(1), 0.5, seed=0) == (_samples(1), [])


def _source(images, labels, num_classes=1):
    codec = MaskCodec("binary" if num_classes == 1 else "indexed", num_classes)
    samples = [Sample(f"s{i}", None, None) for i in range(len(images))]
    cache = {s.stem: pair for s, pair in zip(samples, zip(images, labels, strict=True),
                                             strict=True)}
    return PairSource(samples, [i.shape[:2] for i in images], codec, images[0].shape[2], cache)


def test_training_batches_have_the_right_shapes_and_targets():
    rng = np.random.default_rng(0)
    images = [rng.random(shape).astype(np.float32) for shape in ((40, 50, 1), (70, 64, 1))]
    labels = [rng.integers(0, 2, im.shape[:2]).astype(np.uint16) for im in images]
    dataset = training_dataset(_source(images, labels), patch_size=48, batch_size=3,
                               augmentation="default", seed=1)
    batches = list(dataset.take(4).as_numpy_iterator())
    for x, y in batches:
        assert x.shape == (3, 48, 48, 1) and x.dtype == np.float32
        assert y.shape == (3, 48, 48, 3) and y.dtype == np.float32
        valid = y[..., 2]
        np.testing.assert_array_equal(y[..., :2].sum(-1), valid)  # one-hot where valid
        assert set(np.unique(y).tolist()) <= {0.0, 1.0}
    # The 40x50 image is smaller than a patch: its padding must be ignored somewhere.
    assert any((y[..., 2] == 0).any() for _, y in batches)
    again = list(training_dataset(_source(images, labels), patch_size=48, batch_size=3,
                                  augmentation="default", seed=1).take(4).as_numpy_iterator())
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_validation_covers_every_pixel_exactly_once():
    rng = np.random.default_rng(1)
    images = [rng.random(shape).astype(np.float32) for shape in ((37, 50, 2), (16, 16, 2))]
    labels = [rng.integers(0, 3, im.shape[:2]).astype(np.uint16) for im in images]
    labels[0][0, 0] = IGNORE_LABEL
    dataset = validation_dataset(_source(images, labels, num_classes=3), patch_size=16,
                                 batch_size=4)
    targets = np.concatenate([y for _, y in dataset.as_numpy_iterator()])
    assert targets.shape[0] == 3 * 4 + 1  # 37x50 -> 3x4 tiles, 16x16 -> 1 tile
    counts = targets[..., :3].sum(axis=(0, 1, 2))
    expected = np.bincount(np.concatenate([labels[0].ravel(), labels[1].ravel()]),
                           minlength=IGNORE_LABEL + 1)[:3]
    np.testing.assert_array_equal(counts, expected)
    assert targets[..., 3].sum() == 37 * 50 + 16 * 16 - 1


def test_validation_limited_to_its_first_batches_ends_there():
    """``batches=``: the whole pass's first batches, and the dataset ends after them (an
    iterator used up, not dropped with batches in flight)."""
    rng = np.random.default_rng(4)
    images = [rng.random((48, 64, 1)).astype(np.float32) for _ in range(3)]
    labels = [rng.integers(0, 2, im.shape[:2]).astype(np.uint16) for im in images]
    source = _source(images, labels)
    whole = list(validation_dataset(source, patch_size=16, batch_size=5).as_numpy_iterator())
    first = list(validation_dataset(source, patch_size=16, batch_size=5, batches=2)
                 .as_numpy_iterator())
    assert len(whole) == 8 and len(first) == 2  # 3 images x 12 tiles = 36 -> 8 batches
    for (x1, y1), (x2, y2) in zip(first, whole[:2], strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    every = validation_dataset(source, patch_size=16, batch_size=5, batches=100)
    assert len(list(every.as_numpy_iterator())) == 8  # no more than there are


def test_validation_patches_hold_real_image_not_zero_padding():
    """Border cells are scored in a patch shifted back inside the image, and an image
    smaller than a patch is mirrored: no patch shows the model a band of zeros."""
    rng = np.random.default_rng(2)
    images = [rng.random(shape).astype(np.float32) + 0.5 for shape in ((37, 50, 1), (10, 12, 1))]
    labels = [rng.integers(0, 2, im.shape[:2]).astype(np.uint16) for im in images]
    dataset = validation_dataset(_source(images, labels), patch_size=16, batch_size=13)
    x, y = next(dataset.as_numpy_iterator())
    assert x.shape[0] == 13 and x.min() >= 0.5                 # no zeros anywhere
    # The 37x50 image's last cell (rows 32-36, columns 48-49) is scored in the patch
    # of rows 21-36, columns 34-49, with only its own 5x2 pixels counted.
    np.testing.assert_array_equal(x[11], images[0][21:37, 34:50])
    valid = y[11, ..., -1]
    assert valid.sum() == 5 * 2 and valid[11:, 14:].all()
    np.testing.assert_array_equal(y[11, 11:, 14:, 1], labels[0][32:, 48:])
    # The 10x12 image: mirrored out to 16x16, its own pixels counted once.
    np.testing.assert_array_equal(x[12, :10, :12], images[1])
    np.testing.assert_array_equal(x[12, 10:, :12], images[1][8:2:-1])
    assert y[12, ..., -1].sum() == 10 * 12 and y[12, :10, :12, -1].all()


def test_patch_draw_centres_on_classes_by_weight_in_pairs_that_hold_them():
    rng = np.random.default_rng(3)
    images = [rng.random((32, 32, 1)).astype(np.float32) for _ in range(4)]
    labels = [np.zeros((32, 32), np.uint16) for _ in range(4)]
    labels[0][:4, :4] = 1            # class 1 in pair 0 only; class 2 in pairs 1 and 2
    labels[1][5:9, 5:9] = 2
    labels[2][0, 0] = 2
    source = _source(images, labels, num_classes=3)
    np.testing.assert_array_equal(source.presence(), [[1, 1, 0], [1, 0, 1], [1, 0, 1],
                                                      [1, 0, 0]])
    draw = PatchDraw(source, 1.0, [5.0, 1.0, 3.0])  # label 0's weight is never used
    picks = [draw(np.random.default_rng(seed)) for seed in range(2000)]
    centred = [label for _, label in picks]
    assert set(centred) == {1, 2} and abs(centred.count(2) / 2000 - 0.75) < 0.03
    assert {index for index, label in picks if label == 1} == {0}
    assert {index for index, label in picks if label == 2} == {1, 2}
    # No oversampling: pairs by area, never centred; the same seed, the same pick.
    plain = PatchDraw(source, 0.0)
    assert {plain(np.random.default_rng(s))[1] for s in range(50)} == {None}
    assert draw(np.random.default_rng(7)) == draw(np.random.default_rng(7))
    # Only weights for labels no pair holds: nothing to centre on.
    assert PatchDraw(source, 1.0, [0, 0, 0]).class_weights is None
    with pytest.raises(ValueError, match="class_weights must be 3 weights"):
        PatchDraw(source, 1.0, [1.0, 1.0])


def test_rare_class_patches_reach_the_rare_class():
    rng = np.random.default_rng(4)
    images = [rng.random((200, 200, 1)).astype(np.float32) for _ in range(3)]
    labels = [np.ones((200, 200), np.uint16) for _ in range(3)]
    labels[2][150:154, 20:24] = 2    # 16 pixels of class 2 in one pair of three
    dataset = training_dataset(_source(images, labels, num_classes=3), patch_size=48,
                               batch_size=8, augmentation="none", foreground_oversampling=0.5,
                               class_weights=[0, 0.1, 0.9], seed=0)
    _, targets = next(dataset.take(1).as_numpy_iterator())
    with_rare = int((targets[..., 2].sum(axis=(1, 2)) > 0).sum())
    assert with_rare >= 2   # about 0.45 of 8 centred on it; a random crop: under 0.1
