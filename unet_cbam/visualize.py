"""Plotting helpers shared by train.py, predict.py and the notebooks.

Each returns a matplotlib ``Figure`` and never shows it, so scripts can save
it and notebooks display it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

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
