"""Pair images with masks and check every pair before training starts.

All problems are collected first and reported together, each naming its
file, so a user fixes a data set in one round instead of one traceback at a
time from deep inside tf.data.
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from unet_cbam.config import DEFAULT_MAX_PIXELS, DataConfig, ModelConfig
from unet_cbam.data.classes import (
    MaskClasses,
    is_colour,
    resolve_binary_threshold,
    resolve_classes,
)
from unet_cbam.data.demo import ensure_demo
from unet_cbam.data.io import (  # noqa: F401 (DataError: read from here by the package)
    IGNORE_LABEL,
    IMAGE_EXTENSIONS,
    LOSSY_EXTENSIONS,
    DataError,
    ImageReadError,
    MaskCodec,
    convert_channels,
    image_size,
    is_image_file,
    read_mask_raw,
    read_palette,
    read_raw,
)
from unet_cbam.progress import progress as progress_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One pair: its stem, image file and mask file."""
    stem: str
    image_path: Path
    mask_path: Path


@dataclass
class SampleInfo:
    """What verification learnt about one pair."""

    height: int
    width: int
    channels: int
    bit_depth: int
    label_counts: np.ndarray  # pixels per class id, then ignored pixels
    mask_bit_depth: int = 8
    mask_is_palette: bool = False
    dtype: str = "uint8"
    #: A random sample of the raw pixels ``(n, channels)``, and of those under foreground.
    pixels: np.ndarray | None = None
    foreground_pixels: np.ndarray | None = None
    #: Areas of the connected components (8-connected) of each foreground label.
    object_areas: dict[int, np.ndarray] = field(default_factory=dict)
    #: A random sample of each label's pixels' distances (Euclidean, in pixels) to the
    #: nearest pixel of another label: how thick its structures are.
    label_distances: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class DatasetReport:
    """Pairs that passed, what went wrong with the rest, and statistics."""

    samples: list[Sample]
    codec: MaskCodec | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, SampleInfo] = field(default_factory=dict)
    #: (raw image as stored, labels) per stem when they fit the cache budget.
    cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    #: Distinct raw values of binary masks (up to a few), to write masks alike.
    binary_raw_values: set[int] = field(default_factory=set)
    binary_bit_depth: int = 8
    #: Distinct raw values over all binary masks (at most MAX_LISTED_VALUES + 1 kept).
    binary_distinct: set[int] = field(default_factory=set)

    def binary_values(self) -> tuple[int, int]:
        """The (background, foreground) values to write for binary masks like these.

        Two distinct values in the masks (0/1, 0/255, 0/65535): those. Anything
        else (instance labels, a single value): 0 and the largest value of the
        masks' bit depth.
        """
        top = 65535 if self.binary_bit_depth == 16 else 255
        if len(self.binary_raw_values) == 2 and self.codec is not None:
            low, high = sorted(self.binary_raw_values)
            if low <= self.codec.threshold < high:
                return int(low), int(high)
        return 0, top

    @property
    def class_pixels(self) -> np.ndarray:
        """Pixels per class over all pairs (last entry: ignored pixels)."""
        counts = [i.label_counts for i in self.info.values()]
        return np.sum(counts, axis=0) if counts else np.zeros(0, dtype=np.int64)

    def raise_for_problems(self) -> None:
        """Raise ``DataError`` with every problem found, if there is any."""
        if self.problems:
            raise DataError(self.problems)


def data_folders(data: DataConfig) -> tuple[Path, Path]:
    """(images, masks) folders: --images/--masks, --data, or the demo set."""
    if data.images is not None:
        return Path(data.images), Path(data.masks)
    root = Path(data.data) if data.data is not None else ensure_demo()
    return root / "images", root / "masks"


def find_pairs(images_dir: str | Path, masks_dir: str | Path
               ) -> tuple[list[Sample], list[str]]:
    """Pair ``images_dir/a.*`` with ``masks_dir/a.*`` by file stem.

    Returns the pairs (sorted by stem) and a problem per unpaired or
    ambiguous file.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    problems = []
    for folder, what in ((images_dir, "image"), (masks_dir, "mask")):
        if not folder.is_dir():
            problems.append(f"{folder}: {what} folder not found")
    if problems:
        return [], problems
    images, masks = _by_stem(images_dir, problems), _by_stem(masks_dir, problems)
    if not images:
        problems.append(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if not masks:
        problems.append(f"{masks_dir}: no masks ({', '.join(IMAGE_EXTENSIONS)})")
    for stem in sorted(set(images) - set(masks)):
        problems.append(f"{images[stem]}: no mask named {stem}.* in {masks_dir}")
    for stem in sorted(set(masks) - set(images)):
        problems.append(f"{masks[stem]}: mask without an image named {stem}.* in {images_dir}")
    samples = [Sample(stem, images[stem], masks[stem]) for stem in sorted(set(images) & set(masks))]
    return samples, problems


def _by_stem(folder: Path, problems: list[str]) -> dict[str, Path]:
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_image_file(path):
            found[path.stem].append(path)
    for stem, paths in found.items():
        if len(paths) > 1:
            problems.append(f"{paths[0]}: several files share the stem {stem!r}: "
                            f"{', '.join(p.name for p in paths)}")
    return {stem: paths[0] for stem, paths in found.items() if len(paths) == 1}


def detect_codec(samples: list[Sample], data: DataConfig, num_classes: int) -> MaskCodec:
    """The codec ``data`` describes, with ``mask_encoding: auto`` resolved from the masks.

    The encoding is detected from the first readable mask; palette masks get
    their palette from it. Binary masks get their written values from the
    masks later (see ``DatasetReport.binary_values``).
    """
    encoding, palette, colors = data.mask_encoding, data.palette, data.class_colors
    first_raw, first_is_palette, first_path = None, False, None
    for sample in samples:
        try:
            first_raw, first_is_palette = read_mask_raw(sample.mask_path)
            first_path = sample.mask_path
            break
        except (ImageReadError, OSError):
            continue
    if encoding == "auto":
        if first_is_palette:
            encoding = "palette"
        elif colors is not None or (first_raw is not None and is_colour(first_raw)):
            if colors is None:
                raise DataError([f"{first_path}: colour mask; give class_colors (the [r, g, b] "
                                 "of each class) to train on colour masks"])
            encoding = "rgb"
        else:
            encoding = "binary" if num_classes == 1 else "indexed"
    if encoding == "binary" and num_classes != 1:
        raise DataError([f"binary masks need num_classes 1, got {num_classes}"])
    if encoding != "binary" and num_classes < 2:
        raise DataError([f"{encoding} masks need num_classes >= 2 (the number of classes), "
                         f"got {num_classes}"])
    if encoding == "rgb" and (colors is None or len(colors) != num_classes):
        raise DataError([f"rgb masks need class_colors with {num_classes} colours, "
                         f"got {colors}"])
    if encoding == "palette" and palette is None and first_is_palette:
        palette = [list(c) for c in read_palette(first_path)]
    return MaskCodec.from_data_config(data, num_classes, encoding=encoding, palette=palette)


def verify_pairs(samples: list[Sample], codec: MaskCodec, channels: int, *,
                 cache_bytes: float = 0, workers: int = 4, progress: bool = True,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, explain_values: bool = True
                 ) -> DatasetReport:
    """Decode every pair once; collect problems, statistics and (optionally) the pixels.

    Each image must decode, have a mask of the same size, and convert to
    ``channels`` channels; each mask's values must fit ``codec``. ``explain_values``:
    warn when binary masks hold more than two values (off when the threshold
    was chosen from the masks, ``resolve_binary_threshold``, which says why).
    Pairs (the image as stored, the labels) are kept in ``report.cache`` while
    they fit ``cache_bytes``; each pair's ``SampleInfo`` holds pixel samples
    and object sizes for the fingerprint (``unet_cbam.fingerprint``).
    """
    report = DatasetReport(samples=[], codec=codec)
    lossy = [s.mask_path for s in samples if s.mask_path.suffix.lower() in LOSSY_EXTENSIONS]
    if lossy:
        report.warnings.append(
            f"{len(lossy)} mask(s) use lossy JPEG compression, which blurs class boundaries "
            f"into values that were never drawn (e.g. {lossy[0]}); save masks as PNG")
    expected = sum(_estimated_bytes(s, channels) for s in samples)
    keep = 0 < expected <= cache_bytes
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    budget = int(np.clip(PIXEL_SAMPLE_BUDGET // max(1, len(samples)), 64, PIXELS_PER_IMAGE))

    def check(sample: Sample):
        return sample, _check_pair(sample, codec, channels, keep, max_pixels, budget)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, samples)
        for sample, (problems, info, pixels, raw_values) in progress_of(
                results, total=len(samples), desc="verifying data", unit="pair",
                enabled=progress, leave=False):
            if problems:
                report.problems.extend(problems)
                continue
            report.samples.append(sample)
            report.info[sample.stem] = info
            if raw_values is not None:
                if len(report.binary_raw_values) <= 2:
                    report.binary_raw_values.update(sorted(raw_values)[:3])
                    report.binary_bit_depth = max(report.binary_bit_depth, info.mask_bit_depth)
                if len(report.binary_distinct) <= MAX_LISTED_VALUES:
                    report.binary_distinct.update(sorted(raw_values)[:MAX_LISTED_VALUES + 1])
            if pixels is not None:
                cache[sample.stem] = pixels
    report.cache = cache if keep else None
    _check_mixed_palettes(report, codec)
    if explain_values and codec.encoding == "binary" and len(report.binary_distinct) > 2:
        values = sorted(report.binary_distinct)
        shown = ", ".join(map(str, values[:MAX_LISTED_VALUES]))
        more = " ..." if len(values) > MAX_LISTED_VALUES else ""
        report.warnings.append(
            f"binary masks hold more than two values ({shown}{more}): every value above "
            f"{codec.threshold} is foreground. If these are class ids, train with "
            "--num-classes N (indexed masks); instance labels are fine as they are")
    for warning in report.warnings:
        logger.warning(warning)
    return report


MAX_LISTED_VALUES = 10
#: Raw pixels sampled for the fingerprint: at most this many over the data set ...
PIXEL_SAMPLE_BUDGET = 2_000_000
#: ... and at most this many (and at least 64) per image, under foreground as well.
PIXELS_PER_IMAGE = 5_000
#: Distances to another label sampled per label and image (structure widths).
DISTANCE_SAMPLES = 2_000


def _check_mixed_palettes(report: DatasetReport, codec: MaskCodec) -> None:
    """Palette and plain masks mixed: read alike, one kind would mean other classes.

    A palette PNG's pixels are palette indices; the same picture saved as a
    plain PNG holds colour values. Mixed in one data set, one kind is read
    wrongly (foreground inverted, in the case that prompted this check): the
    files of the smaller kind are problems.
    """
    flags = {stem: info.mask_is_palette for stem, info in report.info.items()}
    palettes = [stem for stem, is_palette in flags.items() if is_palette]
    if not palettes or len(palettes) == len(flags) or codec.encoding == "palette":
        return  # palette encoding: plain masks were refused one by one already
    odd_palette = len(palettes) <= len(flags) - len(palettes)
    odd = set(palettes) if odd_palette else set(flags) - set(palettes)
    for sample in [s for s in report.samples if s.stem in odd]:
        report.problems.append(
            f"{sample.mask_path}: " + (
                "a palette PNG among plain masks: its pixels are palette indices, not the "
                "values the other masks hold; save it like the others" if odd_palette else
                "a plain mask among palette PNGs: save it as a palette PNG like the others"))
    report.samples = [s for s in report.samples if s.stem not in odd]
    for stem in odd:
        report.info.pop(stem, None)


def _estimated_bytes(sample: Sample, channels: int) -> int:
    try:
        height, width = image_size(sample.image_path)
    except Exception:
        return 0
    return height * width * (channels * 4 + 2)


def _check_pair(sample: Sample, codec: MaskCodec, channels: int, keep: bool,
                max_pixels: int | None, pixel_budget: int = PIXELS_PER_IMAGE):
    problems = []
    raw = labels = None
    try:
        raw = read_raw(sample.image_path, max_pixels)
        check_image(raw, channels, sample.image_path)
    except ImageReadError as error:
        problems.append(str(error))
        raw = None
    try:
        raw_mask, is_palette = read_mask_raw(sample.mask_path, max_pixels)
        if codec.encoding == "palette" and not is_palette:
            raise ImageReadError(f"{sample.mask_path}: not a palette PNG like the other masks")
        if raw is not None and raw_mask.shape[:2] != raw.shape[:2]:
            raise ImageReadError(
                f"{sample.mask_path}: mask is {raw_mask.shape[1]}x{raw_mask.shape[0]} pixels but "
                f"its image {sample.image_path.name} is {raw.shape[1]}x{raw.shape[0]}")
        labels = codec.decode(raw_mask, sample.mask_path)
    except ImageReadError as error:
        problems.append(str(error))
    if problems:
        return problems, None, None, None
    counts = np.bincount(np.minimum(labels.ravel(), codec.num_labels),
                         minlength=codec.num_labels + 1)
    counts[codec.num_labels] = int((labels == IGNORE_LABEL).sum())
    info = SampleInfo(raw.shape[0], raw.shape[1], 1 if raw.ndim == 2 else raw.shape[2],
                      raw.dtype.itemsize * 8, counts.astype(np.int64),
                      raw_mask.dtype.itemsize * 8, is_palette, dtype=str(raw.dtype))
    _sample_statistics(info, sample.stem, raw, labels, codec.num_labels, pixel_budget)
    raw_values = None
    if codec.encoding == "binary":
        flat = raw_mask if raw_mask.ndim == 2 else raw_mask.max(axis=-1)
        raw_values = set(np.unique(flat).tolist())
    return [], info, ((raw, labels) if keep else None), raw_values


def check_image(raw: np.ndarray, channels: int, path: Path) -> None:
    """What every normalisation needs: a known type, finite values, usable channels."""
    if raw.dtype.kind not in "uif":
        raise ImageReadError(f"{path}: unsupported pixel type {raw.dtype}")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise ImageReadError(f"{path}: float image with NaN or infinite values")
    convert_channels(raw[:1, :1], channels, path)


def _sample_statistics(info: SampleInfo, stem: str, raw: np.ndarray, labels: np.ndarray,
                       num_labels: int, budget: int) -> None:
    """Pixel samples and object sizes for the fingerprint (seeded by the file stem)."""
    rng = np.random.default_rng(zlib.crc32(stem.encode()))
    flat = raw.reshape(raw.shape[0] * raw.shape[1], -1)
    count = flat.shape[0]
    info.pixels = flat[rng.choice(count, budget, replace=False)] if count > budget \
        else flat.copy()
    foreground = np.flatnonzero((labels.ravel() > 0) & (labels.ravel() != IGNORE_LABEL))
    if len(foreground) > budget:
        foreground = rng.choice(foreground, budget, replace=False)
    info.foreground_pixels = flat[foreground]
    for label in range(1, num_labels):
        if info.label_counts[label]:
            _, _, stats, _ = cv2.connectedComponentsWithStats(
                (labels == label).astype(np.uint8), connectivity=8)
            info.object_areas[label] = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    for label in range(num_labels):
        if info.label_counts[label] and info.label_counts[label] < count:
            inside = (labels == label).astype(np.uint8)
            distances = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            values = distances[inside > 0] - 0.5  # to the border between the pixels
            if len(values) > DISTANCE_SAMPLES:
                values = rng.choice(values, DISTANCE_SAMPLES, replace=False)
            info.label_distances[label] = values.astype(np.float32)


@dataclass
class VerifiedPairs:
    """A data folder's pairs (and ``val_data``'s), their mask encoding, and every problem."""

    images_dir: Path
    masks_dir: Path
    data: DataConfig            # with the mask encoding, classes and threshold resolved
    samples: list[Sample]       # the data folder's pairs
    val_samples: list[Sample]   # val_data's pairs
    codec: MaskCodec
    report: DatasetReport       # problems: pairing's first, then each pair's
    threshold_reason: str | None
    num_classes: int            # the model's (1: binary)
    classes: MaskClasses | None = None  # what the masks were found to encode, and why


def verify_data(data: DataConfig, model: ModelConfig, progress: bool = True,
                cache: bool = True) -> VerifiedPairs:
    """Pair the data folder (and ``val_data``), decide what the masks encode and how many
    classes they hold (``classes.resolve_classes``: ``mask_encoding`` and ``num_classes``
    auto), resolve the binary threshold and verify every pair, collecting every problem in
    the report; raise ``DataError`` only where nothing can be verified (no pairs, or masks
    whose classes cannot be told). ``cache``: keep decoded pixels in memory (up to
    ``cache_gb``)."""
    images_dir, masks_dir = data_folders(data)
    samples, problems = find_pairs(images_dir, masks_dir)
    val_samples: list[Sample] = []
    if data.val_data is not None:
        val_samples, val_problems = find_pairs(Path(data.val_data) / "images",
                                               Path(data.val_data) / "masks")
        problems += val_problems
    if not samples + val_samples:
        raise DataError(problems)
    try:
        data, num_classes, classes = resolve_classes(samples + val_samples, data,
                                                     model.num_classes)
        data, threshold_reason = resolve_binary_threshold(samples + val_samples, data,
                                                          num_classes)
        codec = detect_codec(samples + val_samples, data, num_classes)
    except DataError as error:
        raise DataError(problems + error.problems) from None
    report = verify_pairs(samples + val_samples, codec, model.input_channels,
                          cache_bytes=data.cache_gb * 1e9 if cache else 0, progress=progress,
                          max_pixels=data.max_pixels, explain_values=threshold_reason is None)
    report.problems = problems + report.problems  # every problem at once, pairing first
    return VerifiedPairs(images_dir, masks_dir, data, samples, val_samples, codec, report,
                         threshold_reason, num_classes, classes)
