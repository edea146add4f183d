"""Augmentation pipelines with albumentations 2.

albumentations 2 only warns about a misspelled or removed argument and then
ignores it, which would silently train without the augmentation a user asked
for. Here such an argument is an error that names the transform (using the
``invalid_args`` albumentations records), and pipelines are composed with
``strict=True``.

Masks are uint16 class ids and always resampled with nearest-neighbour
interpolation; geometric transforms reflect at the borders, so a mask keeps
exactly its label set.
"""

from __future__ import annotations

import warnings
from typing import Any

import albumentations as A
import cv2

from unet_cbam.data.io import IGNORE_LABEL

_NEAREST = cv2.INTER_NEAREST
_REFLECT = cv2.BORDER_REFLECT_101


def _light() -> list[dict[str, Any]]:
    return [
        {"HorizontalFlip": {"p": 0.5}},
        {"VerticalFlip": {"p": 0.5}},
        {"RandomRotate90": {"p": 0.5}},
    ]


def _default() -> list[dict[str, Any]]:
    return _light() + [
        {"Affine": {"scale": [0.85, 1.15], "rotate": [-20, 20], "shear": [-5, 5],
                    "translate_percent": [-0.05, 0.05], "border_mode": _REFLECT,
                    "mask_interpolation": _NEAREST, "p": 0.5}},
        {"RandomBrightnessContrast": {"brightness_limit": 0.15, "contrast_limit": 0.15,
                                      "p": 0.5}},
        {"RandomGamma": {"gamma_limit": [85, 115], "p": 0.3}},
        {"OneOf": {"p": 0.3, "transforms": [
            {"GaussianBlur": {"blur_limit": [3, 5]}},
            {"GaussNoise": {"std_range": [0.01, 0.05]}},
        ]}},
    ]


def _heavy() -> list[dict[str, Any]]:
    return _light() + [
        {"Affine": {"scale": [0.75, 1.25], "rotate": [-45, 45], "shear": [-10, 10],
                    "translate_percent": [-0.1, 0.1], "border_mode": _REFLECT,
                    "mask_interpolation": _NEAREST, "p": 0.7}},
        {"ElasticTransform": {"alpha": 30, "sigma": 6, "border_mode": _REFLECT,
                              "mask_interpolation": _NEAREST, "p": 0.3}},
        {"RandomBrightnessContrast": {"brightness_limit": 0.25, "contrast_limit": 0.25,
                                      "p": 0.7}},
        {"RandomGamma": {"gamma_limit": [70, 130], "p": 0.5}},
        {"OneOf": {"p": 0.5, "transforms": [
            {"GaussianBlur": {"blur_limit": [3, 7]}},
            {"MotionBlur": {"blur_limit": [3, 7]}},
            {"GaussNoise": {"std_range": [0.02, 0.1]}},
        ]}},
    ]


PRESETS = {"none": list, "light": _light, "default": _default, "heavy": _heavy}


def build_transforms(spec: list[dict[str, Any]]) -> list[A.BasicTransform]:
    """``[{"Name": {arg: value}}, ...]`` -> albumentations transforms, strictly checked."""
    transforms = []
    for index, item in enumerate(spec):
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"augmentation #{index + 1}: expected {{TransformName: {{...}}}}, "
                             f"got {item!r}")
        (name, arguments), = item.items()
        arguments = dict(arguments or {})
        transform_cls = getattr(A, name, None)
        if not isinstance(transform_cls, type):
            raise ValueError(f"augmentation #{index + 1}: albumentations has no transform "
                             f"{name!r}")
        if "transforms" in arguments:  # OneOf, SomeOf, Sequential
            arguments["transforms"] = build_transforms(arguments["transforms"])
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not valid for transform")
                transform = transform_cls(**arguments)
        except Exception as error:
            raise ValueError(f"augmentation #{index + 1} ({name}): {error}") from None
        invalid = getattr(transform, "invalid_args", None)
        if invalid:
            raise ValueError(
                f"augmentation #{index + 1} ({name}): argument(s) {', '.join(invalid)} are not "
                f"valid (misspelled, or removed in albumentations {A.__version__})")
        transforms.append(transform)
    return transforms


def augmentation_pipeline(preset: str = "default",
                          custom: list[dict[str, Any]] | None = None,
                          seed: int | None = None) -> A.Compose:
    """The training augmentation: a preset, or the user's own list if given."""
    if custom is None and preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; "
                         f"choose one of {', '.join(PRESETS)}")
    spec = custom if custom is not None else PRESETS[preset]()
    return A.Compose(build_transforms(spec), strict=True, seed=seed)


def patch_sampler(patch_size: int, centre_on: int | None = None, num_labels: int = 2,
                  seed: int | None = None) -> A.Compose:
    """Pad to at least ``patch_size`` (padding is ignored by the loss), then crop.

    With ``centre_on`` (a label) the crop holds a pixel of that label, drawn at
    random among them (albumentations' ``CropNonEmptyMaskIfExists`` with every
    other of the ``num_labels`` labels and the ignore label ignored), or is
    taken anywhere when the pair has none; without it, anywhere.
    """
    pad = A.PadIfNeeded(min_height=patch_size, min_width=patch_size,
                        border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_LABEL)
    if centre_on is None:
        crop = A.RandomCrop(patch_size, patch_size)
    else:
        others = [label for label in range(num_labels) if label != centre_on]
        crop = A.CropNonEmptyMaskIfExists(patch_size, patch_size,
                                          ignore_values=[*others, IGNORE_LABEL])
    return A.Compose([pad, crop], seed=seed)
