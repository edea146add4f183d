import numpy as np
import pytest

from unet_cbam.data.augment import PRESETS, augmentation_pipeline, build_transforms, patch_sampler
from unet_cbam.data.io import IGNORE_LABEL


def _pair(seed=0, size=(80, 80)):  # square, like the patches
    rng = np.random.default_rng(seed)
    image = rng.random(size + (3,)).astype(np.float32)
    labels = np.zeros(size, np.uint16)
    labels[10:40, 20:60] = 1
    labels[50:70, 5:30] = 3
    labels[0:5] = IGNORE_LABEL
    return image, labels


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_keep_the_label_set(preset):
    image, labels = _pair()
    pipeline = augmentation_pipeline(preset, seed=3)
    allowed = set(np.unique(labels).tolist())
    for _ in range(25):
        out = pipeline(image=image, mask=labels)
        assert out["image"].shape == image.shape and out["image"].dtype == np.float32
        assert out["mask"].dtype == np.uint16
        assert set(np.unique(out["mask"]).tolist()) <= allowed


def test_custom_pipeline_from_config():
    pipeline = augmentation_pipeline(custom=[
        {"HorizontalFlip": {"p": 1.0}},
        {"OneOf": {"p": 1.0, "transforms": [{"VerticalFlip": {"p": 1.0}}]}},
    ])
    image, labels = _pair()
    out = pipeline(image=image, mask=labels)
    np.testing.assert_array_equal(out["mask"], labels[::-1, ::-1])
    np.testing.assert_array_equal(out["image"], image[::-1, ::-1])


@pytest.mark.parametrize("spec, message", [
    ([{"HorizontalFlip": {"probability": 0.5}}],
     r"#1 \(HorizontalFlip\): argument\(s\) probability"),
    ([{"GaussNoise": {"var_limit": [10, 50]}}], r"argument\(s\) var_limit are not valid"),
    ([{"VerticalFlip": {}}, {"OneOf": {"transforms": [{"Blur": {"blur_lmit": 3}}]}}],
     r"#1 \(Blur\): argument\(s\) blur_lmit"),
    ([{"RandomSizedCropp": {}}], "albumentations has no transform 'RandomSizedCropp'"),
    (["HorizontalFlip"], r"expected \{TransformName"),
])
def test_misspelled_or_removed_arguments_fail(spec, message):
    with pytest.raises(ValueError, match=message):
        build_transforms(spec)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown augmentation preset 'medium'"):
        augmentation_pipeline("medium")


def test_small_images_are_padded_with_ignored_pixels():
    sampler = patch_sampler(64, seed=0)
    image = np.ones((40, 50, 3), np.float32)
    labels = np.ones((40, 50), np.uint16)
    out = sampler(image=image, mask=labels)
    assert out["image"].shape == (64, 64, 3)
    assert (out["mask"] == 1).sum() == 40 * 50
    assert (out["mask"] == IGNORE_LABEL).sum() == 64 * 64 - 40 * 50
    assert out["image"][out["mask"] == IGNORE_LABEL].max() == 0


def test_a_centred_patch_holds_its_label_and_a_random_one_rarely_does():
    labels = np.zeros((512, 512), np.uint16)
    labels[400:410, 30:40] = 1
    labels[100:300, 100:300] = 2
    image = np.zeros((512, 512, 1), np.float32)

    def hits(centre_on, label):
        sampler = patch_sampler(64, centre_on, num_labels=3, seed=1)
        return sum((sampler(image=image, mask=labels)["mask"] == label).any() for _ in range(60))
    assert hits(1, 1) == 60 and hits(2, 2) == 60
    assert hits(None, 1) < 15
    # A label the pair does not have: a crop anywhere, not an error.
    anywhere = patch_sampler(64, 5, num_labels=6, seed=0)(image=image, mask=labels)
    assert anywhere["mask"].shape == (64, 64)
