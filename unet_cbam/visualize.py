"""Plotting helpers shared by train.py, predict.py and the notebooks.

Each returns a matplotlib ``Figure`` and never shows it, so scripts can save
it and notebooks display it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # pyplot-free: no GUI backend, safe in threads

History = Mapping[str, Sequence[float]]


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv (Keras CSVLogger) -> ``{column: values}``."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def plot_history(history: History, title: str | None = None) -> Figure:
    """Loss, Dice, IoU (training dashed, validation solid) and learning rate per epoch.

    ``history`` maps column names (``loss``, ``val_loss``, ``dice_cell``,
    ``val_dice_cell``, ``mean_dice``, ``learning_rate``...) to one value per
    epoch, as in history.csv; epochs come from its 0-based ``epoch`` column.
    A 2 x 2 grid: loss, Dice per class and mean, IoU per class and mean,
    learning rate (log scale; omitted panel if not logged).
    """
    epochs = [e + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
    names = [k for k in history if not k.startswith("val_")]
    panels = [("loss", ["loss"]),
              ("Dice", [k for k in names if k.startswith("dice_")] + (
                  ["mean_dice"] if "mean_dice" in history else [])),
              ("IoU", [k for k in names if k.startswith("iou_")] + (
                  ["mean_iou"] if "mean_iou" in history else []))]
    figure = Figure(figsize=(10, 7), layout="constrained")
    axes = figure.subplots(2, 2).ravel()
    for axis, (name, keys) in zip(axes, panels, strict=False):
        for index, key in enumerate(k for k in keys if k in history):
            color = "k" if key.startswith("mean_") or key == "loss" else f"C{index}"
            label = key.replace("dice_", "").replace("iou_", "") if name != "loss" else key
            axis.plot(epochs, history[key], color=color, linestyle="--", alpha=0.7,
                      label=f"{label} (train)")
            if f"val_{key}" in history:
                axis.plot(epochs, history[f"val_{key}"], color=color, label=f"{label} (val)")
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
    lr_axis = axes[3]
    if "learning_rate" in history:
        lr_axis.plot(epochs, history["learning_rate"], color="k")
        lr_axis.set_yscale("log")
        lr_axis.set_title("learning rate")
        lr_axis.set_xlabel("epoch")
        lr_axis.grid(alpha=0.3)
    else:
        lr_axis.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------
# images, masks and attention
# --------------------------------------------------------------------------

#: Class colours (RGB, 0-255): class 0 is drawn transparent in overlays.
CLASS_COLORS = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
], dtype=np.uint8)


def class_colors(count: int) -> np.ndarray:
    """``(count, 3)`` uint8 colours, cycling through a 16-colour palette."""
    return CLASS_COLORS[np.arange(count) % len(CLASS_COLORS)]


def display_image(image: np.ndarray) -> np.ndarray:
    """A model input ``(H, W, C)`` in [0, 1] -> uint8 RGB ``(H, W, 3)`` for display.

    One channel is shown as gray, three as RGB, any other count by its first channel.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] != 3:
        image = np.repeat(image[..., :1], 3, axis=2)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray | None = None,
            alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)``: ``labels > 0`` tinted with their class colour."""
    base = display_image(image).astype(np.float32)
    labels = np.asarray(labels)
    colors = class_colors(int(labels.max()) + 1) if colors is None else np.asarray(colors)
    tinted = labels > 0
    if tinted.any():
        painted = colors[np.minimum(labels, len(colors) - 1)].astype(np.float32)
        base[tinted] = (1 - alpha) * base[tinted] + alpha * painted[tinted]
    return base.round().astype(np.uint8)


def add_legend(image: np.ndarray, names: list[str], colors: np.ndarray) -> np.ndarray:
    """Append a strip under ``image`` with a colour box and name per class (class 0 skipped)."""
    from PIL import Image, ImageDraw  # drawing text without a GUI backend

    row_height = 18
    entries = list(zip(names, colors, strict=False))[1:]
    strip = Image.new("RGB", (image.shape[1], row_height * max(1, len(entries)) + 6),
                      (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for index, (name, color) in enumerate(entries):
        top = 3 + index * row_height
        draw.rectangle([4, top + 2, 18, top + 14], fill=tuple(int(c) for c in color))
        draw.text((24, top + 1), str(name), fill=(0, 0, 0))
    return np.concatenate([image, np.asarray(strip)], axis=0)


def plot_attention(image: np.ndarray, maps: Mapping[int, Mapping[str, np.ndarray]],
                   title: str | None = None, alpha: float = 0.55) -> Figure:
    """The image, then each skip level's spatial attention map over it.

    ``maps`` is one image's entry of ``attention_maps`` (``{level: {"spatial":
    (h, w), "channel": (C,)}}``, without the batch axis). A second row shows
    each level's channel weights sorted, when present.
    """
    levels = [level for level in sorted(maps) if "spatial" in maps[level]] or sorted(maps)
    has_channel = any("channel" in maps[level] for level in levels)
    rows = 2 if has_channel else 1
    figure = Figure(figsize=(2.8 * (len(levels) + 1), 2.9 * rows), layout="constrained")
    axes = figure.subplots(rows, len(levels) + 1, squeeze=False)
    shown = display_image(image)
    axes[0, 0].imshow(shown)
    axes[0, 0].set_title("image")
    for column, level in enumerate(levels, start=1):
        axis = axes[0, column]
        if "spatial" in maps[level]:
            axis.imshow(shown)
            spatial = maps[level]["spatial"]
            picture = axis.imshow(spatial, cmap="magma", alpha=alpha, vmin=0.0, vmax=1.0,
                                  extent=(-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5),
                                  interpolation="bilinear")
            axis.set_title(f"level {level} (stride {2 ** level}) spatial")
        else:
            axis.set_visible(False)
    for axis in axes[0]:
        axis.set_xticks([])
        axis.set_yticks([])
    if any("spatial" in maps[level] for level in levels):
        figure.colorbar(picture, ax=axes[0, -1], fraction=0.046, label="attention")
    if has_channel:
        axes[1, 0].set_visible(False)
        for column, level in enumerate(levels, start=1):
            axis = axes[1, column]
            if "channel" not in maps[level]:
                axis.set_visible(False)
                continue
            weights = np.sort(np.asarray(maps[level]["channel"]))[::-1]
            axis.bar(np.arange(len(weights)), weights, width=1.0, color="C0")
            axis.axhline(0.5, color="k", linewidth=0.8, linestyle=":")
            axis.set_ylim(0, 1)
            axis.set_title(f"level {level} channel weights")
            axis.set_xlabel("channel (sorted)")
    if title:
        figure.suptitle(title)
    return figure
