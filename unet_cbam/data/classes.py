"""What the masks of a folder encode, read from the masks themselves.

``detect_classes`` tells apart, with a reason for the plan:

- **binary masks**: two values (0/255, 0/1, 0/65535), or JPEG masks and resampled
  masks whose values gather around two modes;
- **instance labels**: many values that differ from image to image, each forming one
  connected object (cells, nuclei): trained as foreground against background;
- **indexed class masks**: a small set of integer values that recur across images
  (class ids 0..K-1); 255 beside them, as in Pascal VOC, is the void label;
- **colour masks** (RGB, or RGBA with an opaque alpha): one colour per class; the
  classes are the colours found across the masks, in ascending (R, G, B) order, so
  black (0, 0, 0) is class 0. Colours found only on thin edges between classes
  (antialiasing, resampling) are reported with their files and ignored, not made
  classes;
- **palette PNGs**: the palette's indices are the class ids (as before).

Where the masks do not say, or a mask contradicts the rest, ``DataError`` lists one
problem per file with the option that settles it: never a guess.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from unet_cbam.config import DEFAULT_MAX_PIXELS, DataConfig
from unet_cbam.data.io import (
    LOSSY_EXTENSIONS,
    DataError,
    ImageReadError,
    on_edges,
    pack_colors,
    read_mask_raw,
)

logger = logging.getLogger(__name__)

#: Masks read to decide (evenly spread over the data set; verification reads them all).
DETECTION_SAMPLE = 200
#: Class ids above this are not indexed class masks (uint8 ids, 255 reserved for void).
MAX_INDEXED_CLASSES = 254
#: Pixel value that marks void in indexed masks holding 0..K-1 (Pascal VOC's convention).
VOID_VALUE = 255
#: Instance labels: at least this share of (mask, value) pairs form one connected object ...
SINGLE_OBJECT_SHARE = 0.9
#: ... and there are more labels than this, or they recur in at most this share of the masks
#: (tracking ids); otherwise class ids of one object each (organs) are as likely, and the
#: user is asked.
MAX_INSTANCE_AMBIGUITY = 32
MAX_INSTANCE_RECURRENCE = 0.5
#: A colour is an edge colour (antialiasing) when at least this share of its pixels touch
#: another colour ...
EDGE_SHARE = 0.9
#: ... and it covers at most this share of any mask's pixels.
EDGE_MAX_FRACTION = 0.01
#: A value or colour found in one mask alone, among at least this many, contradicts the rest.
MIN_MASKS_FOR_AGREEMENT = 8


@dataclass
class MaskClasses:
    """What the masks encode, decided by ``detect_classes``."""

    encoding: str                     # binary, indexed, rgb or palette
    num_classes: int                  # the model's: 1 for binary (a sigmoid head)
    reason: str
    colors: list[list[int]] | None = None   # rgb: the colour of each class, in class order
    ignore_value: int | None = None         # indexed: the void value found
    ignore_edges: bool = False               # rgb: edge colours found (ignored)
    #: rgb: each edge colour (r, g, b) -> (pixels, up to 3 files), as reported.
    edge_colors: dict[tuple[int, int, int], tuple[int, list[str]]] = field(
        default_factory=dict)


def _spread(samples: Sequence, limit: int) -> list:
    if len(samples) <= limit:
        return list(samples)
    return [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]


def resolve_classes(samples: Sequence, data: DataConfig, num_classes: int | str
                    ) -> tuple[DataConfig, int, MaskClasses | None]:
    """``data`` and the class count with ``mask_encoding: auto`` and ``num_classes: auto``
    decided from the masks (``detect_classes``), and the decision (None where both were
    given, or the encoding says it all). Raises ``DataError`` as ``detect_classes`` does."""
    given = None if num_classes == "auto" else int(num_classes)
    encoding = data.mask_encoding
    if encoding == "binary" or (encoding == "auto" and given == 1):
        return dataclasses.replace(data, mask_encoding="binary"), \
            1 if given is None else given, None
    if encoding != "auto" and given is not None:
        return data, given, None
    if encoding == "rgb" and data.class_colors and given is None:
        return data, len(data.class_colors), None
    found = detect_classes(samples, given, data.ignore_value, data.ignore_color,
                           data.max_pixels, forced=None if encoding == "auto" else encoding)
    data = dataclasses.replace(
        data, mask_encoding=found.encoding,
        class_colors=data.class_colors if data.class_colors is not None else found.colors,
        ignore_value=data.ignore_value if data.ignore_value is not None
        else found.ignore_value,
        ignore_edges=data.ignore_edges or found.ignore_edges)
    return data, found.num_classes, found


def detect_classes(samples: Sequence, num_classes: int | None = None,
                   ignore_value: int | None = None, ignore_color: Sequence[int] | None = None,
                   max_pixels: int | None = None, limit: int = DETECTION_SAMPLE,
                   forced: str | None = None) -> MaskClasses:
    """Decide what the masks of ``samples`` encode (see the module docstring).

    ``num_classes``, ``ignore_value`` and ``ignore_color``: what the user gave, checked
    against the masks (a class count that disagrees is refused). ``forced``: the
    encoding the user gave (indexed, palette or rgb), whose classes are counted. Raises
    ``DataError`` with one problem per file where the masks are ambiguous or contradict
    the rest.
    """
    picked = _spread(samples, limit)
    masks, problems = [], []
    for sample in picked:
        try:
            raw, palette = read_mask_raw(sample.mask_path, max_pixels)
        except (ImageReadError, OSError):
            continue  # verification reports it, with its reason
        masks.append((sample.mask_path, raw, palette))
    if not masks:
        folder = samples[0].mask_path.parent if samples else "the masks"
        raise DataError([f"{folder}: no readable mask to learn the classes from"])
    if forced == "palette" or (forced is None and any(palette for _, _, palette in masks)):
        return _palette_classes(masks, num_classes)
    alpha = [path for path, raw, _ in masks
             if raw.ndim == 3 and raw.shape[2] == 4 and (raw[..., 3] != raw[..., 3].max()).any()]
    problems += [f"{path}: RGBA mask with a transparent part; masks need an opaque alpha "
                 "(or none): save it as RGB" for path in alpha]
    colour = [(path, raw) for path, raw, _ in masks if is_colour(raw)]
    if problems:
        raise DataError(problems)
    if colour or forced == "rgb":
        plain = [path for path, raw, _ in masks if not is_colour(raw)]
        return _colour_classes([(p, raw[..., :3]) for p, raw, _ in masks if raw.ndim == 3],
                               plain if colour else [], num_classes, ignore_color)
    return _value_classes([(p, _gray(raw)) for p, raw, _ in masks], num_classes,
                          ignore_value, indexed=forced == "indexed")


def _palette_classes(masks: list, num_classes: int | None) -> MaskClasses:
    """Palette PNGs: the indices are the class ids; their count from the largest index."""
    largest = max(int(raw.max()) for _, raw, _ in masks)
    if num_classes is not None and num_classes <= largest:
        path = next(p for p, raw, _ in masks if int(raw.max()) == largest)
        raise DataError([f"{path}: palette index {largest}, but --num-classes is "
                         f"{num_classes}: give --num-classes {largest + 1}"])
    count = num_classes or largest + 1
    return MaskClasses("palette", count, f"palette PNG masks: the palette's indices are the "
                       f"class ids, {count} classes (the largest index read is {largest})")


def is_colour(raw: np.ndarray) -> bool:
    """Whether a decoded mask holds colours (channels that differ somewhere)."""
    return raw.ndim == 3 and not (raw[..., :3] == raw[..., :1]).all()


def _gray(raw: np.ndarray) -> np.ndarray:
    return raw if raw.ndim == 2 else raw[..., 0]


# --------------------------------------------------------------------------
# binary masks: the threshold
# --------------------------------------------------------------------------

#: Masks read to choose the binary threshold (evenly spread over the data set).
THRESHOLD_SAMPLE = 32


def choose_binary_threshold(samples: Sequence, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                            limit: int = THRESHOLD_SAMPLE) -> tuple[int, str]:
    """``binary_threshold: auto``: the threshold and its reason, from the masks' histogram."""
    picked = samples if len(samples) <= limit else \
        [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]
    counts: dict[int, int] = defaultdict(int)
    top = 255
    for sample in picked:
        try:
            raw, _ = read_mask_raw(sample.mask_path, max_pixels)
        except (ImageReadError, OSError):
            continue  # verification reports it
        if raw.dtype.kind == "f":
            continue
        flat = raw if raw.ndim == 2 else raw[..., :3].max(axis=-1)
        values, numbers = np.unique(flat, return_counts=True)
        for value, number in zip(values.tolist(), numbers.tolist(), strict=True):
            counts[int(value)] += int(number)
        top = max(top, int(np.iinfo(raw.dtype).max))
    lossy = any(s.mask_path.suffix.lower() in LOSSY_EXTENSIONS for s in picked)
    values = np.array(sorted(counts), dtype=np.int64)
    return binary_threshold_from_histogram(
        values, np.array([counts[v] for v in values.tolist()], dtype=np.int64), lossy, top)


def binary_threshold_from_histogram(values: np.ndarray, counts: np.ndarray, lossy: bool,
                                    top: int = 255) -> tuple[int, str]:
    """The rule behind ``binary_threshold: auto``.

    Clean masks (two values such as 0/1 or 0/255, or many values that are
    instance labels): foreground is any value above the background (the
    smallest value). JPEG masks, or masks whose values gather around two
    modes far apart with a little noise between (resampled or compressed
    0/255 masks): the middle between the two modes.
    """
    if len(values) == 0:
        return 0, "no readable mask values: foreground is any value above 0"
    low = int(values[0])
    if len(values) <= 2:
        shown = "/".join(str(int(v)) for v in values)
        return low, f"clean masks (values {shown}): foreground is any value above {low}"
    middle = (int(values[0]) + int(values[-1])) / 2
    below = values <= middle
    low_mode = int(values[below][np.argmax(counts[below])])
    high_mode = int(values[~below][np.argmax(counts[~below])])
    band = (int(values[-1]) - int(values[0])) / 8
    near = (np.abs(values - low_mode) <= band) | (np.abs(values - high_mode) <= band)
    near_fraction = float(counts[near].sum() / counts.sum())
    two_modes = near_fraction >= 0.99 and high_mode - low_mode >= top / 2
    if lossy or two_modes:
        threshold = (low_mode + high_mode) // 2
        why = "JPEG masks" if lossy else f"{len(values)} mask values"
        return threshold, (f"{why} gather around two modes, {low_mode} and {high_mode} "
                           f"({near_fraction:.1%} of the pixels within {band:.0f} of one); "
                           f"foreground is any value above the middle, {threshold}")
    return low, (f"{len(values)} distinct mask values that do not form two noisy modes "
                 f"(instance labels or ids): foreground is any value above {low}")


def resolve_binary_threshold(samples: Sequence, data: DataConfig, num_classes: int
                             ) -> tuple[DataConfig, str | None]:
    """``data`` with ``binary_threshold: auto`` replaced by its value, and the reason."""
    if data.binary_threshold != "auto":
        return data, None
    if num_classes != 1 or data.mask_encoding not in ("auto", "binary"):
        return dataclasses.replace(data, binary_threshold=0), None
    threshold, reason = choose_binary_threshold(samples, data.max_pixels)
    return dataclasses.replace(data, binary_threshold=threshold), reason


# --------------------------------------------------------------------------
# single-channel masks: binary, instance labels or class ids
# --------------------------------------------------------------------------

def _value_classes(masks: list[tuple[Path, np.ndarray]], num_classes: int | None,
                   ignore_value: int | None, indexed: bool = False) -> MaskClasses:
    """Binary, instance labels or class ids (``indexed``: class ids, as the user says)."""
    counts: Counter = Counter()
    present: dict[int, list[Path]] = defaultdict(list)
    for path, values in masks:
        if values.dtype.kind == "f":
            raise DataError([f"{path}: float mask; masks hold integer labels"])
        found, numbers = np.unique(values, return_counts=True)
        counts.update(dict(zip(found.tolist(), numbers.tolist(), strict=True)))
        for value in found.tolist():
            present[value].append(path)
    values = sorted(counts)
    void = _void(values, ignore_value)
    classes = [v for v in values if v != void]
    # A class count given says the values are class ids, as --mask-encoding indexed does.
    indexed = indexed or (num_classes is not None and num_classes >= 2)
    if not indexed:
        found = _binary_or_instances(masks, values, classes, void, counts, present)
        if found is not None:
            return found
    problems = []
    if num_classes is None and len(masks) >= MIN_MASKS_FOR_AGREEMENT:
        for value in classes:
            if len(present[value]) == 1:
                problems.append(
                    f"{present[value][0]}: value {value} is in no other mask of "
                    f"{len(masks)} read; if it is a class give --num-classes "
                    f"{max(classes) + 1}, if it marks pixels to leave out --ignore-value "
                    f"{value}, else correct the mask")
    detected = max(classes) + 1
    if num_classes is not None and num_classes < detected:
        problems.append(f"{present[max(classes)][0]}: holds class id {max(classes)}, "
                        f"but --num-classes is {num_classes}: ids must be 0..{num_classes - 1}"
                        f" (give --num-classes {detected}, or --ignore-value {max(classes)})")
    if problems:
        raise DataError(problems)
    count = num_classes if num_classes is not None else detected
    missing = sorted(set(range(count)) - set(classes))
    if num_classes is not None or indexed:
        reason = (f"class ids {_ranges(classes)} in the masks: indexed class masks, {count} "
                  "classes" + (" (as --num-classes says)" if num_classes is not None else ""))
    else:
        reason = (f"{len(classes)} class ids ({_ranges(classes)}) recurring across the "
                  f"masks (each value in {_share(present, classes, len(masks))} of the "
                  f"{len(masks)} masks read on average, in several pieces): indexed class "
                  f"masks, {count} classes")
    if missing:
        reason += f"; class(es) {_ranges(missing)} never seen in the masks read"
    if void is not None:
        reason += f"; {void} is the void label (left out of the loss and the scores)"
    return MaskClasses("indexed", count, reason, ignore_value=void)


def _binary_or_instances(masks: list[tuple[Path, np.ndarray]], values: list[int],
                         classes: list[int], void: int | None, counts: Counter,
                         present: dict[int, list[Path]]) -> MaskClasses | None:
    """Binary masks (two values, JPEG or resampled noise, or two values and void) or
    instance labels, as the masks show; None for class ids. Raises ``DataError`` where
    the masks could be either instance labels or class ids."""
    lossy = any(path.suffix.lower() in LOSSY_EXTENSIONS for path, _ in masks)
    if len(values) <= 2 or lossy:
        return MaskClasses("binary", 1, _binary_reason(values, lossy))
    if len(classes) <= 2 and void is not None:
        return MaskClasses("binary", 1, f"values {'/'.join(map(str, classes))} with "
                           f"{void} as void (Pascal VOC's convention: left out of the loss "
                           "and the scores): binary masks", ignore_value=void)
    if void is None:  # resampled 0/255 masks: two modes and a little noise between
        top = max(int(np.iinfo(v.dtype).max) for _, v in masks)
        histogram = np.array([counts[v] for v in values], np.int64)
        _, why = binary_threshold_from_histogram(np.array(values), histogram, lossy, top)
        if "two modes" in why:
            return MaskClasses("binary", 1, why)
    single = _single_objects(masks, void)
    labels = len(classes) - 1  # besides the background
    # Tracking ids (each object its own id across the data set) recur in few masks.
    recurring = len(masks) < 2 or np.mean(
        [len(present[v]) for v in classes[1:]]) / len(masks) > MAX_INSTANCE_RECURRENCE
    if single >= SINGLE_OBJECT_SHARE and (labels > MAX_INSTANCE_AMBIGUITY or not recurring):
        return MaskClasses("binary", 1, (
            f"{labels} labels besides the background {values[0]}, {single:.0%} of them one "
            "connected object in each mask, differing from mask to mask: instance labels, "
            f"trained as foreground (any value above {values[0]}) against background; "
            "--num-classes N if they are "
            "class ids"))
    if max(classes) > MAX_INDEXED_CLASSES:
        raise DataError([
            f"{present[max(classes)][0]}: mask values up to {max(classes)} are too large for "
            f"class ids (0..{MAX_INDEXED_CLASSES}) and do not look like instance labels (one "
            "object each): give --mask-encoding binary to train them as foreground, or "
            "--mask-encoding indexed with --num-classes N"])
    if single >= SINGLE_OBJECT_SHARE:  # few values, each one object: either could be meant
        raise DataError([
            f"{masks[0][0].parent}: the masks hold {labels} values besides the background "
            f"({_ranges(classes[1:])}), each one connected object in each mask: instance "
            f"labels or class ids? Give --mask-encoding binary for instances, or "
            f"--num-classes {max(classes) + 1} for classes"])
    return None


def _binary_reason(values: list[int], lossy: bool) -> str:
    if lossy:
        return "JPEG masks: binary (the threshold sits between the two modes)"
    return f"values {'/'.join(map(str, values))}: binary masks"


def _void(values: list[int], ignore_value: int | None) -> int | None:
    """The void value: given, or 255 beside small class ids 0..K-1 (uint8 masks)."""
    if ignore_value is not None:
        return ignore_value if ignore_value in values else None
    others = [v for v in values if v != VOID_VALUE]
    if VOID_VALUE in values and others and max(others) < 64 and len(others) >= 2:
        return VOID_VALUE
    return None


def _single_objects(masks: list[tuple[Path, np.ndarray]], void: int | None) -> float:
    """The share of (mask, value) pairs that form one connected object, the background
    (smallest value) and void left out."""
    single = total = 0
    for _, values in masks[:64]:
        for value in [v for v in np.unique(values).tolist()[1:] if v != void][:256]:
            pieces, _ = cv2.connectedComponents((values == value).astype(np.uint8),
                                                connectivity=8)
            single += pieces - 1 == 1
            total += 1
    return single / total if total else 0.0


def _share(present: dict[int, list[Path]], classes: list[int], masks: int) -> str:
    return f"{np.mean([len(present[v]) for v in classes]) / masks:.0%}"


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    values, parts, start = sorted(values), [], None
    for index, value in enumerate(values):
        if start is None:
            start = value
        if index + 1 == len(values) or values[index + 1] != value + 1:
            parts.append(f"{start}-{value}" if value > start else f"{value}")
            start = None
    return ", ".join(parts)


# --------------------------------------------------------------------------
# colour masks
# --------------------------------------------------------------------------

def _colour_classes(masks: list[tuple[Path, np.ndarray]], plain: list[Path],
                    num_classes: int | None, ignore_color: Sequence[int] | None
                    ) -> MaskClasses:
    """The classes of colour masks: their colours, edge colours left out."""
    pixels: Counter = Counter()
    on_edge_pixels: Counter = Counter()
    largest: dict[int, float] = defaultdict(float)   # the largest share of one mask
    files: dict[int, list[Path]] = defaultdict(list)
    for path, rgb in masks:
        key = pack_colors(rgb)
        boundary = on_edges(key)
        found, inverse, numbers = np.unique(key, return_inverse=True, return_counts=True)
        on_edge = np.bincount(inverse.ravel(), weights=boundary.ravel(),
                              minlength=len(found)).astype(np.int64)
        for colour, number, edge in zip(found.tolist(), numbers.tolist(), on_edge.tolist(),
                                        strict=True):
            pixels[colour] += number
            on_edge_pixels[colour] += edge
            largest[colour] = max(largest[colour], number / key.size)
            files[colour].append(path)
    ignored = _key(ignore_color) if ignore_color is not None else None
    edges = {c for c in pixels if c != ignored and on_edge_pixels[c] >= EDGE_SHARE * pixels[c]
             and largest[c] <= EDGE_MAX_FRACTION}
    classes = sorted(c for c in pixels if c not in edges and c != ignored)
    problems = [f"{path}: a gray mask among colour masks (e.g. {masks[0][0].name}); "
                "save every mask in the same encoding" for path in plain[:10]]
    if len(masks) >= MIN_MASKS_FOR_AGREEMENT:
        for colour in classes:
            if len(files[colour]) == 1:
                problems.append(
                    f"{files[colour][0]}: colour {_rgb(colour)} ({pixels[colour]} pixels) is "
                    f"in no other mask of {len(masks)} read; if it is a class give "
                    "--class-colors with it, if it marks pixels to leave out --ignore-color "
                    f"{' '.join(map(str, _rgb(colour)))}, else correct the mask")
    if num_classes and num_classes > 1 and num_classes != len(classes):
        problems.append(f"{masks[0][0].parent}: the masks hold {len(classes)} class colours "
                        f"({', '.join(str(_rgb(c)) for c in classes[:12])}), --num-classes "
                        f"says {num_classes}: give --class-colors to say which are classes")
    if len(classes) < 2:
        problems.append(f"{masks[0][0].parent}: the colour masks hold {len(classes)} "
                        "colour(s) besides edges: nothing to tell apart")
    if problems:
        raise DataError(problems)
    colors = [list(_rgb(c)) for c in classes]
    edge_colors = {_rgb(c): (int(pixels[c]), [str(p) for p in files[c][:3]])
                   for c in sorted(edges)}
    for colour, (count, where) in edge_colors.items():
        logger.warning("colour %s is found only on edges between classes (%d pixels, in "
                       "%s%s): antialiasing or resampling; those pixels are left out of the "
                       "loss and the scores", colour, count, ", ".join(where),
                       " ..." if len(files[_key(colour)]) > 3 else "")
    table = ", ".join(f"{index} = {r}:{g}:{b}" for index, (r, g, b) in enumerate(colors))
    reason = (f"colour masks with {len(classes)} colours, one class each, in ascending "
              f"R:G:B order: {table}; --class-names names them in this order")
    if edge_colors:
        reason += (f"; {len(edge_colors)} colour(s) only on edges between classes "
                   f"(antialiasing: {', '.join(str(c) for c in list(edge_colors)[:5])}) "
                   "are left out")
    return MaskClasses("rgb", len(classes), reason, colors=colors,
                       ignore_edges=bool(edge_colors), edge_colors=edge_colors)


def _key(colour: Sequence[int]) -> int:
    r, g, b = (int(v) for v in colour)
    return (r << 32) | (g << 16) | b


def _rgb(key: int) -> tuple[int, int, int]:
    return (key >> 32) & 0xFFFF, (key >> 16) & 0xFFFF, key & 0xFFFF
