"""Post-processing chosen on validation data, nnU-Net style.

For each foreground class, three steps are tried on the validation
predictions: removing connected components smaller than a size derived from
the fingerprint's object sizes, keeping only the largest component, and
filling holes (background enclosed by the class). A step is kept only if it
raises the class's Dice pooled over the validation images and does so
consistently: in at least ``CONFIDENCE`` (0.95) of the paired bootstrap
resamples of the validation images in which it changes the Dice
(``gain_confidence``). For binary models the probability threshold is tuned
first, under the same rule. With one foreground class, every choice is judged
on the Dice of the class the plan names (``tune_on``: the rarer of the two,
so the thin background membranes of an EM slice rather than the cells they
enclose). The result is the run's ``inference`` section (``config.yaml``),
which predict.py applies unless ``--no-postprocess``.

numpy and OpenCV only (connected components: ``cv2.connectedComponentsWithStats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from unet_cbam.config import DEFAULT_THRESHOLD, TunedInference
from unet_cbam.data.io import IGNORE_LABEL
from unet_cbam.inference import probabilities_to_labels

#: Probability thresholds tried for binary models.
THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2).tolist())
#: A change must raise the pooled validation Dice by more than this to be kept.
MIN_GAIN = 1e-4
#: ... and win in at least this share of the bootstrap resamples in which it wins or
#: loses (0: any gain is kept, the rule before). With any gain kept, the choices made on
#: Kvasir-SEG validation frames lowered the Dice on other validation frames (0.687
#: against plain 0.5's 0.692, eight models); at 0.95 they matched it (0.692), on CTC
#: all rules tied (``benchmarks/postprocess_holdout.py``; README, *A stricter rule*).
CONFIDENCE = 0.95
#: Paired bootstrap resamples of the validation images (fixed seed: reproducible choices).
RESAMPLES = 2000
#: Validation images used for the choice at most (evenly spread), for bounded time.
MAX_IMAGES = 64

Pairs = Sequence[tuple[np.ndarray, np.ndarray]]  # (probabilities (H, W, K), truth (H, W))


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_size`` pixels."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # the background component
    return keep[components]


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected component of ``mask`` (nothing if it is empty)."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    return components == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every 4-connected region of non-mask pixels that does not reach the
    image border filled."""
    outside = (~mask.astype(bool)).astype(np.uint8)
    count, components = cv2.connectedComponents(outside, connectivity=4)
    border = np.unique(np.concatenate([components[0], components[-1], components[:, 0],
                                       components[:, -1]]))
    holes = (components > 0) & ~np.isin(components, border)
    return mask.astype(bool) | holes


def apply_steps(labels: np.ndarray, label: int, steps: dict[str, Any]) -> np.ndarray:
    """Class ``label``'s post-processing on a label image (removed pixels become 0;
    only background is filled)."""
    mask = labels == label
    kept = mask
    if steps.get("min_size"):
        kept = remove_small(kept, int(steps["min_size"]))
    if steps.get("largest_only"):
        kept = keep_largest(kept)
    result = labels.copy()
    result[mask & ~kept] = 0
    if steps.get("fill_holes"):
        result[fill_holes(kept) & (labels == 0)] = label
    return result


def postprocess(labels: np.ndarray, inference: TunedInference | None,
                class_names: Sequence[str]) -> np.ndarray:
    """A run's chosen post-processing (its ``inference`` section) on a label image."""
    for name, steps in (inference.classes if inference is not None else {}).items():
        if name in class_names and any(steps.get(k) for k in ("min_size", "largest_only",
                                                                "fill_holes")):
            labels = apply_steps(labels, list(class_names).index(name), steps)
    return labels


def dice_counts(pairs: Sequence[tuple[np.ndarray, np.ndarray]], label: int) -> np.ndarray:
    """(images, 3) int64: each (prediction, truth) label pair's overlap, predicted and
    true pixel counts of ``label``, ignored pixels left out."""
    counts = np.zeros((len(pairs), 3), np.int64)
    for row, (prediction, truth) in enumerate(pairs):
        valid = truth != IGNORE_LABEL
        hit, want = (prediction == label) & valid, (truth == label) & valid
        counts[row] = (np.count_nonzero(hit & want), np.count_nonzero(hit),
                       np.count_nonzero(want))
    return counts


def _dice(sums: np.ndarray) -> np.ndarray:
    """Dice of summed counts (..., 3); 1 where neither prediction nor truth has the class."""
    overlap, total = sums[..., 0], sums[..., 1] + sums[..., 2]
    return np.where(total > 0, 2 * overlap / np.maximum(total, 1), 1.0)


def pooled_dice(pairs: Sequence[tuple[np.ndarray, np.ndarray]], label: int) -> float:
    """Dice of ``label`` over all (prediction, truth) label pairs; ignored pixels left out."""
    return float(_dice(dice_counts(pairs, label).sum(axis=0)))


def gain_confidence(before: np.ndarray, after: np.ndarray, resamples: int = RESAMPLES,
                    seed: int = 0) -> float:
    """How consistently ``after`` beats ``before`` (per-image ``dice_counts`` of the same
    images): the share of paired bootstrap resamples of the images (the same draw for
    both) in which its pooled Dice is higher, among those in which the two differ (a
    step that changes few images is judged on the resamples that contain them); 0 if
    they never differ."""
    images = len(before)
    weights = np.random.default_rng(seed).multinomial(
        images, np.full(images, 1 / images), size=resamples)
    gain = _dice(weights @ after) - _dice(weights @ before)
    wins, losses = np.count_nonzero(gain > 1e-12), np.count_nonzero(gain < -1e-12)
    return wins / (wins + losses) if wins + losses else 0.0


def size_candidates(fingerprint: dict[str, Any] | None, name: str) -> list[int]:
    """Minimum component sizes to try for class ``name``: half the 5th percentile and a
    tenth of the median of its objects' areas in the fingerprint (at least 2 pixels)."""
    objects = ((fingerprint or {}).get("objects") or {}).get(name) or {}
    sizes = {int(round(objects[key] * factor)) for key, factor in
             (("p5_area", 0.5), ("median_area", 0.1)) if objects.get(key)}
    return sorted(size for size in sizes if size >= 2)


def tune(pairs: Pairs, class_names: Sequence[str], fingerprint: dict[str, Any] | None = None,
         tune_on: str | None = None, confidence: float = CONFIDENCE) -> TunedInference:
    """The ``inference`` section: threshold (binary) and per-class steps, each kept only
    where it raises the pooled validation Dice by more than ``MIN_GAIN`` and wins in at
    least ``confidence`` of the bootstrap resamples (``gain_confidence``; 0: any gain
    is kept), with the Dice before and after.

    ``tune_on`` (a class name; two classes only) is the class whose Dice judges every
    choice; none: each foreground class judges its own steps (and the threshold)."""
    binary = pairs[0][0].shape[-1] == 1
    truths = [truth for _, truth in pairs]
    result: dict[str, Any] = {"validation_images": len(pairs), "confidence": confidence,
                              "classes": {}}
    judge = None
    if tune_on is not None:
        if tune_on not in class_names or len(class_names) != 2:
            raise ValueError(f"tune_on {tune_on!r} is not one of the two classes "
                             f"{list(class_names)}")
        judge = list(class_names).index(tune_on)
        result["tuned_on"] = tune_on

    def better(candidates: dict[Any, np.ndarray], base: np.ndarray) -> Any:
        """The candidate (key) with the highest pooled Dice among those that beat
        ``base`` by the rule; None if none does. Ties: the first key."""
        reference = float(_dice(base.sum(axis=0)))
        passing = [(float(_dice(counts.sum(axis=0))), key)
                   for key, counts in candidates.items()]
        passing = [(value, key) for value, key in passing if value > reference + MIN_GAIN
                   and gain_confidence(base, candidates[key]) >= confidence]
        return max(passing, key=lambda item: item[0])[1] if passing else None

    threshold = DEFAULT_THRESHOLD
    if binary:
        scored_label = 1 if judge is None else judge
        counts = {t: dice_counts([(probabilities_to_labels(p, t), truth)
                                  for p, truth in pairs], scored_label)
                  for t in THRESHOLDS}
        # Nearer 0.5 first, so that a tie keeps the milder threshold.
        order = sorted((t for t in THRESHOLDS if t != 0.5), key=lambda t: (abs(t - 0.5), t))
        chosen = better({t: counts[t] for t in order}, counts[0.5])
        threshold = DEFAULT_THRESHOLD if chosen is None else chosen
        result["threshold"] = threshold
        result["threshold_dice"] = {
            key: float(_dice(counts[t].sum(axis=0)))
            for key, t in (("0.5", 0.5), (f"{threshold:g}", threshold))}
    labels = [probabilities_to_labels(p, threshold) for p, _ in pairs]
    for label, name in enumerate(class_names):
        if label == 0:
            continue
        steps: dict[str, Any] = {}
        scored = label if judge is None else judge
        base = dice_counts(list(zip(labels, truths, strict=True)), scored)
        before = float(_dice(base.sum(axis=0)))

        def counts_of(candidate: dict[str, Any], label: int = label, scored: int = scored
                      ) -> np.ndarray:
            return dice_counts([(apply_steps(p, label, candidate), t)
                                for p, t in zip(labels, truths, strict=True)], scored)
        sizes = {size: counts_of({"min_size": size})
                 for size in size_candidates(fingerprint, name)}  # ascending: ties smaller
        size = better(sizes, base) if sizes else None
        if size is not None:
            steps["min_size"], base = size, sizes[size]
        for key in ("largest_only", "fill_holes"):
            candidate = {**steps, key: True}
            counts = counts_of(candidate)
            if better({key: counts}, base) is not None:
                steps, base = candidate, counts
        result["classes"][name] = {
            "min_size": steps.get("min_size"), "largest_only": bool(steps.get("largest_only")),
            "fill_holes": bool(steps.get("fill_holes")),
            "validation_dice": [round(before, 6), round(float(_dice(base.sum(axis=0))), 6)]}
    return TunedInference(**result)
