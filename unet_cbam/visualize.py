"""Plotting helpers shared by train.py, predict.py and the notebooks.

Each returns a matplotlib ``Figure`` and never shows it, so scripts can save
it and notebooks display it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # pyplot-free: no GUI backend, safe in threads

from unet_cbam.data.io import IGNORE_LABEL

History = Mapping[str, Sequence[float]]


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
                   title: str | None = None, alpha: float = 0.55,
                   style: str = "overlay") -> Figure:
    """The image, then each skip level's spatial attention map.

    ``maps`` is one image's entry of ``attention_maps`` (``{level: {"spatial":
    (h, w), "channel": (C,)}}``, without the batch axis). ``style`` is
    ``"overlay"`` (the map over the image, ``alpha``) or ``"heatmap"`` (the map
    alone, for figures). A second row shows each level's channel weights
    sorted, when present. Every map uses the same 0-1 colour scale.
    """
    if style not in ("overlay", "heatmap"):
        raise ValueError(f"style must be 'overlay' or 'heatmap', got {style!r}")
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
            if style == "overlay":
                axis.imshow(shown)
            spatial = maps[level]["spatial"]
            picture = axis.imshow(spatial, cmap="magma", alpha=alpha if style == "overlay" else 1,
                                  vmin=0.0, vmax=1.0,
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


# --------------------------------------------------------------------------
# data, predictions, errors
# --------------------------------------------------------------------------

#: Error map colours (RGB).
ERROR_COLORS = {
    "true negative": (0, 0, 0),
    "true positive": (170, 170, 170),
    "false positive": (230, 25, 75),     # predicted a class where the truth is background
    "false negative": (0, 130, 200),     # predicted background where the truth is a class
    "wrong class": (255, 225, 25),       # predicted another non-background class
    "ignored": (128, 128, 128),
}


def error_map(truth: np.ndarray, prediction: np.ndarray, ignore_label: int | None = None
              ) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` colouring each pixel by ``ERROR_COLORS`` (class 0 = background)."""
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ")
    result = np.zeros(truth.shape + (3,), np.uint8)
    cases = {
        "true positive": (truth == prediction) & (truth > 0),
        "false positive": (truth == 0) & (prediction > 0),
        "false negative": (truth > 0) & (prediction == 0),
        "wrong class": (truth > 0) & (prediction > 0) & (truth != prediction),
    }
    if ignore_label is not None:
        ignored = truth == ignore_label
        cases = {name: mask & ~ignored for name, mask in cases.items()}
        cases["ignored"] = ignored
    for name, mask in cases.items():
        result[mask] = ERROR_COLORS[name]
    return result


def _legend_patches(entries):
    from matplotlib.patches import Patch
    return [Patch(facecolor=np.asarray(color) / 255.0, edgecolor="0.5", label=name)
            for name, color in entries]


def plot_samples(samples: Sequence[tuple[str, np.ndarray, np.ndarray]],
                 class_names: Sequence[str], columns: int = 4, alpha: float = 0.45) -> Figure:
    """A grid of images with their masks overlaid: ``samples`` = (title, image, labels)."""
    rows = max(1, -(-len(samples) // columns))
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colors = class_colors(len(class_names))
    for axis, (title, image, labels) in zip(axes, samples, strict=False):
        axis.imshow(overlay(image, _visible(labels), colors, alpha))
        axis.set_title(title, fontsize="small")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[len(samples):]:
        axis.set_visible(False)
    figure.legend(handles=_legend_patches(list(zip(class_names, colors, strict=False))[1:]),
                  loc="outside lower center", ncols=min(6, len(class_names)))
    return figure


def _visible(labels: np.ndarray) -> np.ndarray:
    """Labels for overlays: ignored pixels (a large value) shown as background."""
    labels = np.asarray(labels)
    return np.where(labels == IGNORE_LABEL, 0, labels) if labels.dtype == np.uint16 \
        else labels


def plot_augmentations(image: np.ndarray, labels: np.ndarray,
                       pipelines: Mapping[str, Any], examples: int = 4,
                       class_names: Sequence[str] | None = None, seed: int = 0) -> Figure:
    """One row per pipeline (e.g. each preset): the original, then augmented copies.

    ``pipelines`` maps a name to an albumentations-style callable
    ``pipeline(image=..., mask=...) -> {"image", "mask"}``.
    """
    count = int(_visible(labels).max()) + 1
    colors = class_colors(max(count, len(class_names or [])))
    figure = Figure(figsize=(2.6 * (examples + 1), 2.7 * len(pipelines)), layout="constrained")
    axes = figure.subplots(len(pipelines), examples + 1, squeeze=False)
    for row, (name, pipeline) in enumerate(pipelines.items()):
        axes[row, 0].imshow(overlay(image, _visible(labels), colors))
        axes[row, 0].set_ylabel(name, fontsize="large")
        axes[row, 0].set_title("original" if row == 0 else "", fontsize="small")
        if hasattr(pipeline, "set_random_seed"):
            pipeline.set_random_seed(seed)
        for column in range(1, examples + 1):
            out = pipeline(image=image, mask=labels)
            axes[row, column].imshow(overlay(out["image"], _visible(out["mask"]), colors))
            if row == 0:
                axes[row, column].set_title(f"augmented #{column}", fontsize="small")
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    return figure


def plot_class_balance(fractions: Mapping[str, float], title: str = "class balance") -> Figure:
    """Horizontal bars: share of labelled pixels per class."""
    figure = Figure(figsize=(6, 0.5 + 0.45 * len(fractions)), layout="constrained")
    axis = figure.subplots()
    names = list(fractions)
    values = [fractions[n] for n in names]
    colors = class_colors(len(names)).astype(float) / 255.0
    colors[0] = (0.6, 0.6, 0.6)
    axis.barh(names, values, color=colors)
    for index, value in enumerate(values):
        axis.text(value, index, f" {value:.1%}", va="center")
    axis.set_xlim(0, max(values + [0.01]) * 1.2)
    axis.invert_yaxis()
    axis.set_xlabel("fraction of labelled pixels")
    axis.set_title(title)
    return figure


def plot_confusion_matrix(pixels: Sequence[Sequence[int]], class_names: Sequence[str],
                          title: str = "confusion matrix") -> Figure:
    """Each true class's pixels (rows) by predicted class (columns), as shares of the row.

    ``pixels`` is ``Evaluation.summary()["confusion_matrix"]["pixels"]``; a cell is
    labelled with its share where it is at least 1%, and a row with no pixels stays
    empty.
    """
    counts = np.asarray(pixels, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    size = 1.5 + 0.55 * len(class_names)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, label="share of the true class's pixels")
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            share = shares[row, column]
            if share >= 0.01:
                axis.text(column, row, f"{share:.0%}", ha="center", va="center", fontsize=8,
                          color="white" if share > 0.5 else "black")
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title)
    return figure


def plot_runs(histories: Mapping[str, History], metric: str = "val_mean_dice",
              title: str | None = None) -> Figure:
    """One metric of several runs (e.g. the four attention modes), per epoch."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.subplots()
    for name, history in histories.items():
        if metric not in history:
            continue
        epochs = [e + 1 for e in history.get("epoch", range(len(history[metric])))]
        axis.plot(epochs, history[metric], label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(title or metric)
    return figure


def plot_prediction(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                    class_names: Sequence[str], title: str | None = None,
                    ignore_label: int | None = None) -> Figure:
    """Image, truth, prediction (overlays) and the error map, side by side."""
    colors = class_colors(len(class_names))
    figure = Figure(figsize=(13, 3.9), layout="constrained")
    axes = figure.subplots(1, 4)
    axes[0].imshow(display_image(image))
    axes[0].set_title("image")
    axes[1].imshow(overlay(image, _visible(truth), colors))
    axes[1].set_title("ground truth")
    axes[2].imshow(overlay(image, prediction, colors))
    axes[2].set_title("prediction")
    axes[3].imshow(error_map(truth, prediction, ignore_label))
    axes[3].set_title("errors")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    used = ["false positive", "false negative"] + (["wrong class"] if len(class_names) > 2
                                                   else [])
    axes[3].legend(handles=_legend_patches([(n, ERROR_COLORS[n]) for n in used]),
                   loc="lower center", bbox_to_anchor=(0.5, -0.22), ncols=len(used),
                   fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_threshold_sweep(sweep: Mapping[str, np.ndarray], class_names: Sequence[str]
                         ) -> Figure:
    """Dice against threshold for each class (from ``explore.threshold_sweep``)."""
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    axis = figure.subplots()
    thresholds, dice = sweep["thresholds"], sweep["dice"]
    for index, name in enumerate(class_names):
        best = int(np.nanargmax(dice[:, index]))
        line, = axis.plot(thresholds, dice[:, index], marker=".",
                          label=f"{name} (best {dice[best, index]:.3f} at {thresholds[best]:.2f})")
        axis.plot(thresholds[best], dice[best, index], marker="o", markersize=9,
                  markerfacecolor="none", color=line.get_color())
    axis.axvline(0.5, color="k", linestyle=":", linewidth=0.8)
    axis.set_xlabel("threshold on the foreground probability")
    axis.set_ylabel("Dice (pooled over images)")
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def plot_channel_weights(maps: Mapping[int, Mapping[str, np.ndarray]],
                         title: str = "channel attention weights") -> Figure:
    """Distribution of the channel gates per skip level (all images and channels)."""
    levels = [level for level in sorted(maps) if "channel" in maps[level]]
    if not levels:
        raise ValueError("no channel attention in these maps (attention 'spatial'?)")
    figure = Figure(figsize=(1.8 + 1.4 * len(levels), 4), layout="constrained")
    axis = figure.subplots()
    data = [np.asarray(maps[level]["channel"]).ravel() for level in levels]
    axis.violinplot(data, showmedians=True)
    axis.axhline(0.5, color="k", linestyle=":", linewidth=0.8)
    axis.set_xticks(range(1, len(levels) + 1),
                    [f"level {lv}\n(stride {2 ** lv})" for lv in levels])
    axis.set_ylim(0, 1)
    axis.set_ylabel("gate value")
    axis.set_title(title)
    return figure


def plot_model_comparison(image: np.ndarray, truth: np.ndarray | None,
                          predictions: Mapping[str, np.ndarray], class_names: Sequence[str],
                          title: str | None = None) -> Figure:
    """The same image through several models: image, truth, then each model's
    prediction (overlay) and its error map below."""
    columns = 1 + len(predictions)
    figure = Figure(figsize=(3.3 * columns, 6.6), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False)
    colors = class_colors(len(class_names))
    axes[0, 0].imshow(display_image(image))
    axes[0, 0].set_title("image")
    if truth is not None:
        axes[1, 0].imshow(overlay(image, _visible(truth), colors))
        axes[1, 0].set_title("ground truth")
    else:
        axes[1, 0].set_visible(False)
    for column, (name, prediction) in enumerate(predictions.items(), start=1):
        axes[0, column].imshow(overlay(image, prediction, colors))
        axes[0, column].set_title(name)
        if truth is not None:
            axes[1, column].imshow(error_map(truth, prediction, IGNORE_LABEL))
            axes[1, column].set_title(f"{name}: errors")
        else:
            axes[1, column].set_visible(False)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title)
    return figure


def show(figure: Figure, name: str, save_dir: str | Path | None = None) -> None:
    """Display ``figure`` in a notebook; also save it as ``save_dir/name.png`` if given."""
    from IPython.display import display  # notebooks only

    display(figure)
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        figure.savefig(Path(save_dir) / f"{name}.png", dpi=110)
