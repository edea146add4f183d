"""Small data sets written by tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_pairs(root: Path, count: int = 3, size: tuple[int, int] = (32, 40),
                mask_values: tuple[int, ...] = (0, 255), channels: int = 3,
                seed: int = 0) -> Path:
    """``root/images/pN.png`` and ``root/masks/pN.png`` with random content."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shape = size + ((channels,) if channels > 1 else ())
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        mask = rng.choice(np.array(mask_values, np.uint8), size)
        cv2.imwrite(str(root / "images" / f"p{index}.png"), image)
        cv2.imwrite(str(root / "masks" / f"p{index}.png"), mask)
    return root
