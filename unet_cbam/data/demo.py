"""The built-in demo data set: synthetic but not trivial.

RGB "tissue" images with textured, noisy cells of two size ranges that touch
and overlap, on a textured background with distractors (streaks and faint
blobs that are *not* cells), under uneven illumination. Masks are 0/255 PNGs.
Generated deterministically, offline, in a few seconds.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from unet_cbam.data.io import write_image

logger = logging.getLogger(__name__)

DEFAULT_DEMO_DIR = Path("data") / "demo"
SIZES = ((256, 320), (320, 320), (288, 256), (320, 384))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def make_pair(rng: np.random.Generator, height: int, width: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image uint8 (H, W, 3), mask uint8 (H, W) in {0, 255})`` pair."""
    background = np.array([0.85, 0.72, 0.80], np.float32)  # pinkish stroma
    cell_color = np.array([0.45, 0.30, 0.60], np.float32)  # purple nuclei
    texture = 0.06 * _smooth_noise(rng, (height, width), 3.0)
    image = background[None, None, :] + texture[..., None]
    mask = np.zeros((height, width), np.uint8)

    # Distractors: faint blobs and streaks in a colour between background and cells.
    for _ in range(rng.integers(2, 6)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(8, 30)), int(rng.integers(8, 30)))
        blob = np.zeros((height, width), np.float32)
        cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), 4)
        image -= 0.35 * blob[..., None] * (background - cell_color)[None, None, :]
    for _ in range(rng.integers(1, 4)):
        start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        streak = np.zeros((height, width), np.float32)
        cv2.line(streak, start, end, 1.0, int(rng.integers(2, 5)))
        image -= 0.25 * cv2.GaussianBlur(streak, (0, 0), 1.0)[..., None] * \
            (background - cell_color)[None, None, :]

    # Cells: clusters of touching ellipses, small and large.
    count = int(rng.integers(10, 22))
    chromatin = 0.08 * _smooth_noise(rng, (height, width), 1.5)
    centres = []
    for _ in range(count):
        if centres and rng.random() < 0.5:  # grow a cluster: touch a previous cell
            cx, cy, r = centres[int(rng.integers(len(centres)))]
            angle = rng.uniform(0, 2 * np.pi)
            radius = rng.uniform(6, 12) if rng.random() < 0.5 else rng.uniform(16, 30)
            distance = (r + radius) * rng.uniform(0.75, 1.0)
            cx, cy = cx + distance * np.cos(angle), cy + distance * np.sin(angle)
        else:
            radius = rng.uniform(6, 12) if rng.random() < 0.5 else rng.uniform(16, 30)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        centres.append((cx, cy, radius))
        cell = np.zeros((height, width), np.uint8)
        axes = (int(radius), int(radius * rng.uniform(0.6, 1.0)))
        cv2.ellipse(cell, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        inside = cell.astype(bool)
        if not inside.any():
            continue
        mask[inside] = 255
        shade = rng.uniform(0.75, 1.1)
        image[inside] = (cell_color * shade)[None, :] + chromatin[inside][:, None]
        # A darker rim so touching cells stay separable, as real nuclei are.
        rim = cv2.morphologyEx(cell, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
        image[rim] *= 0.85

    # Uneven illumination, slight blur and sensor noise.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.0 + 0.15 * np.sin(xx / width * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 3))
    light *= 1.0 + 0.1 * (yy / height - 0.5) * rng.choice([-1, 1])
    image = cv2.GaussianBlur(image * light[..., None], (0, 0), 0.8)
    image += rng.normal(0, 0.035, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask


def generate_demo(directory: str | Path = DEFAULT_DEMO_DIR, count: int = 40, seed: int = 0
                  ) -> Path:
    """Write ``count`` pairs to ``directory/images`` and ``directory/masks``.

    Written to a temporary folder first and renamed, so an interrupted run
    never leaves a half-made data set behind.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".demo-", dir=directory.parent))
    try:
        rng = np.random.default_rng(seed)
        for index in range(count):
            height, width = SIZES[index % len(SIZES)]
            image, mask = make_pair(rng, height, width)
            write_image(temporary / "images" / f"demo_{index:03d}.png", image)
            write_image(temporary / "masks" / f"demo_{index:03d}.png", mask)
        temporary.rename(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory


def ensure_demo(directory: str | Path = DEFAULT_DEMO_DIR) -> Path:
    """The demo data folder, generated on first use."""
    directory = Path(directory)
    if not (directory / "images").is_dir():
        logger.info("generating the demo data set in %s", directory)
        generate_demo(directory)
    return directory
