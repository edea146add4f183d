"""Which images to label next (``unet-cbam suggest``): unlabelled images ranked by how
much a mask would teach the model.

Each image is predicted as predict.py predicts it (the run's preprocessing, resolution and
tiling), in several views (flips and a half turn, ``VIEWS``) by every member of the run (the
folds of a cross-validation run). From the views' probabilities:

- **entropy**: the predictive entropy of their mean, per pixel (0 certain, 1 undecided);
- **disagreement**: the mutual information between the prediction and the view or member
  (the mean's entropy less the views' mean entropy; Houlsby et al.'s BALD), per pixel: where
  the views or members contradict one another, which no amount of rounding removes.

An image's **score** is its mean entropy over its pixels, which holds both (entropy =
disagreement + the views' own mean entropy). Images are ranked by score, with diversity:
an image whose small grey thumbnail correlates at least ``similarity`` with one ranked
before it (a near-identical frame) is ranked after every distinct image, so the top K are
not K copies of one hard scene. The CSV holds every input once, in rank order, the bad files
last with their error; the contact sheet shows the top K with their uncertainty maps.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unet_cbam.config import InferenceConfig
from unet_cbam.data.io import ImageReadError, read_raw, resize_image, resize_labels
from unet_cbam.files import atomic_write, one_line, write_text
from unet_cbam.inference import (
    in_view,
    keras_predictor,
    predictive_entropy,
    probabilities_to_labels,
    resampled_predict,
)
from unet_cbam.loading import LoadedRun
from unet_cbam.progress import progress as progress_of

logger = logging.getLogger(__name__)

#: (quarter turns, horizontal flip) of each view: identity, mirrored, turned, both. They
#: keep any tile's shape.
VIEWS = [(0, False), (0, True), (2, False), (2, True)]
#: A pixel counts as uncertain above this entropy (its share is reported per image).
UNCERTAIN = 0.5
#: Side of the thumbnails compared for diversity, and of those kept for the contact sheet.
FEATURE_SIDE, SHEET_SIDE = 24, 160
CSV_NAME, SHEET_NAME = "suggestions.csv", "contact-sheet.png"
#: The contact sheet shows at most this many images (the CSV has them all).
SHEET_MAX = 48


@dataclass
class Scored:
    """One input's scores, or the error that stopped it."""

    path: Path
    score: float = float("nan")  # the mean entropy
    disagreement: float = float("nan")
    uncertain: float = float("nan")
    feature: np.ndarray | None = field(default=None, repr=False)
    #: (image uint8 RGB, entropy map, labels) at most SHEET_SIDE on a side.
    thumbnails: tuple | None = field(default=None, repr=False)
    error: str | None = None
    near: tuple[Path, float] | None = None  # (the similar image ranked before, similarity)


def uncertainty_maps(image: np.ndarray, run: LoadedRun, inference: InferenceConfig,
                     views: int = len(VIEWS), predictors: list | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean probabilities ``(H, W, K)``, entropy ``(H, W)``, disagreement ``(H, W)``) of a
    preprocessed ``image`` over the first ``views`` of ``VIEWS`` and every member."""
    predictors = predictors or [keras_predictor(model) for model in run.members]
    total = expected = None
    count = 0
    for predictor, scale in zip(predictors, run.scales, strict=True):
        for rotations, flip in VIEWS[:views]:
            probabilities = resampled_predict(
                image, in_view(predictor, rotations, flip), scale=scale,
                tile_size=inference.tile_size, overlap=inference.overlap,
                batch_size=inference.batch_size, divisor=run.config.model.divisor)
            entropy = predictive_entropy(probabilities)
            total = probabilities if total is None else total + probabilities
            expected = entropy if expected is None else expected + entropy
            count += 1
    mean = total / count
    entropy = predictive_entropy(mean)
    return mean, entropy, np.maximum(entropy - expected / count, 0.0)


def score_image(path: Path, run: LoadedRun, inference: InferenceConfig, views: int,
                predictors: list, threshold: float) -> Scored:
    """``path``'s scores, thumbnails and diversity feature; a bad file's error."""
    try:
        unit = run.preprocess(read_raw(path), path, standardize=False)  # in [0, 1]
        image = run.normalization.standardize(unit)
    except (ImageReadError, ValueError) as error:
        return Scored(path, error=one_line(error))
    mean, entropy, disagreement = uncertainty_maps(image, run, inference, views, predictors)
    grey = unit.mean(axis=-1)
    feature = resize_image(grey.astype(np.float32), FEATURE_SIDE, FEATURE_SIDE).ravel()
    feature = feature - feature.mean()
    norm = np.linalg.norm(feature)
    feature = feature / norm if norm > 0 else feature
    return Scored(path, score=float(entropy.mean()), disagreement=float(disagreement.mean()),
                  uncertain=float((entropy > UNCERTAIN).mean()), feature=feature,
                  thumbnails=_thumbnails(unit, entropy,
                                         probabilities_to_labels(mean, threshold)))


def _thumbnails(unit, entropy, labels):
    """(image, entropy, labels) at most ``SHEET_SIDE`` on a side, for the contact sheet."""
    from unet_cbam.visualize import display_image

    height, width = entropy.shape
    factor = min(1.0, SHEET_SIDE / max(height, width))
    size = max(1, round(height * factor)), max(1, round(width * factor))
    small = resize_image(display_image(unit).astype(np.float32), *size).round().astype(np.uint8)
    return small, resize_image(entropy, *size), resize_labels(labels, *size)


def rank(scored: list[Scored], similarity: float) -> list[Scored]:
    """The scored images by score, each near-duplicate (thumbnail correlation at least
    ``similarity`` with an image ranked before it) moved after every distinct one; bad
    files last, in input order. Ties keep the input order."""
    good = [s for s in scored if s.error is None]
    good.sort(key=lambda s: -s.score)  # stable: ties in input order
    distinct, duplicates = [], []
    features = np.zeros((0, FEATURE_SIDE * FEATURE_SIDE), np.float32)
    for item in good:
        if len(features):
            similarities = features @ item.feature
            best = int(np.argmax(similarities))
            if similarities[best] >= similarity:
                item.near = (distinct[best].path, float(similarities[best]))
                duplicates.append(item)
                continue
        distinct.append(item)
        features = np.vstack([features, item.feature[None]])
    return distinct + duplicates + [s for s in scored if s.error is not None]


#: The columns of suggestions.csv (``suggestion_rows``).
COLUMNS = ["rank", "image", "score", "disagreement", "uncertain_share", "chosen",
           "near_duplicate_of", "similarity", "reason"]


def suggestion_rows(ranked: list[Scored], count: int, root: Path | None = None
                    ) -> list[dict[str, str]]:
    """One row per input of ``rank``'s list (``COLUMNS``): its rank, name (below ``root``),
    scores, whether it is among the ``count`` chosen, and why; bad files without a rank."""
    def name(p: Path) -> str:
        try:
            return str(p.relative_to(root)) if root is not None else str(p)
        except ValueError:
            return str(p)

    rows, position = [], 0
    for item in ranked:
        if item.error is not None:
            rows.append(dict.fromkeys(COLUMNS, "") | {
                "image": name(item.path), "chosen": "no", "reason": f"skipped: {item.error}"})
            continue
        position += 1
        reason = (f"{item.uncertain:.1%} of its pixels uncertain (entropy > {UNCERTAIN}); "
                  f"mean entropy {item.score:.4f}, of which views and members disagree "
                  f"on {item.disagreement:.4f}")
        if item.near is not None:
            reason = (f"near-duplicate of {name(item.near[0])} (thumbnail correlation "
                      f"{item.near[1]:.3f}): ranked after every distinct image; {reason}")
        rows.append({
            "rank": str(position), "image": name(item.path), "score": f"{item.score:.6f}",
            "disagreement": f"{item.disagreement:.6f}",
            "uncertain_share": f"{item.uncertain:.4f}",
            "chosen": "yes" if position <= count else "no",
            "near_duplicate_of": name(item.near[0]) if item.near else "",
            "similarity": f"{item.near[1]:.4f}" if item.near else "", "reason": reason})
    return rows


def write_csv(path: Path, ranked: list[Scored], count: int, root: Path | None = None) -> None:
    """``suggestion_rows`` as a CSV file, written atomically."""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, COLUMNS)
    writer.writeheader()
    writer.writerows(suggestion_rows(ranked, count, root))
    write_text(path, stream.getvalue())


def plot_contact_sheet(chosen: list[Scored], class_colors=None):
    """A figure of the chosen images: each with its prediction outlined, then its entropy
    map (brighter: less certain), titled with its rank and score."""
    import matplotlib.pyplot as plt

    from unet_cbam.visualize import overlay

    shown = chosen[:SHEET_MAX]
    per_row = 3
    rows = max(1, -(-len(shown) // per_row))
    figure, axes = plt.subplots(rows, per_row * 2, figsize=(per_row * 2 * 2.2, rows * 2.4),
                                squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for index, item in enumerate(shown):
        image, entropy, labels = item.thumbnails
        left = axes[index // per_row, (index % per_row) * 2]
        right = axes[index // per_row, (index % per_row) * 2 + 1]
        left.imshow(overlay(image, labels, class_colors, alpha=0.3))
        left.set_title(f"#{index + 1} {item.path.name}"[:28], fontsize=7)
        right.imshow(entropy, cmap="magma", vmin=0, vmax=1)
        right.set_title(f"score {item.score:.3f}", fontsize=7)
    figure.suptitle(f"label next: the top {len(shown)} (prediction tinted; entropy map)",
                    fontsize=9)
    figure.tight_layout()
    return figure


def score_images(run: LoadedRun, files: list[Path], inference: InferenceConfig | None = None,
                 views: int = len(VIEWS), progress: bool = True) -> list[Scored]:
    """``score_image`` of every file, in order; a bad file is logged and kept with its
    error."""
    inference = inference or InferenceConfig()
    threshold = inference.resolve_threshold(run.config.inference)
    predictors = [keras_predictor(model) for model in run.members]
    scored = []
    for path in progress_of(files, desc="suggest", unit="image", enabled=progress):
        item = score_image(path, run, inference, views, predictors, threshold)
        if item.error is not None:
            logger.warning("skipped: %s", item.error)
        scored.append(item)
    return scored


def suggest(run: LoadedRun, files: list[Path], output: Path, count: int, *,
            root: Path | None = None, views: int = len(VIEWS), similarity: float = 0.9,
            inference: InferenceConfig | None = None, progress: bool = True
            ) -> list[Scored]:
    """Score ``files``, rank them, write ``output/suggestions.csv`` (names below ``root``)
    and ``output/contact-sheet.png``; the ranked list (bad files last)."""
    ranked = rank(score_images(run, files, inference, views, progress), similarity)
    write_csv(output / CSV_NAME, ranked, count, root)
    good = [s for s in ranked if s.error is None]
    if good:
        import matplotlib.pyplot as plt

        from unet_cbam.visualize import class_colors

        figure = plot_contact_sheet(good[:count], class_colors(run.codec.num_labels))
        with atomic_write(output / SHEET_NAME) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
        plt.close(figure)
    return ranked
