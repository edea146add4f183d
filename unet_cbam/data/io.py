"""Reading and writing images and masks: the one module that uses cv2 and PIL.

Images come back as float32 ``(H, W, C)`` in [0, 1], normalised by their bit
depth and converted to the model's channel count. Masks come back as uint16
``(H, W)`` class ids, with ``IGNORE_LABEL`` where a pixel has the ignore
value or colour. How a mask file maps to class ids is a ``MaskCodec``: it is
detected (or configured) once per training set, saved with the run, and used
again by predict.py to write masks in the same values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import tifffile
from PIL import Image

from unet_cbam.config import DEFAULT_MAX_PIXELS
from unet_cbam.data.normalization import (  # noqa: F401 (read from here by the package)
    BITDEPTH,
    NORMALIZE_MODES,
    ImageReadError,
    Normalization,
    to_float,
)
from unet_cbam.files import atomic_write

if TYPE_CHECKING:
    from unet_cbam.config import DataConfig

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
TIFF_EXTENSIONS = (".tif", ".tiff")
# PIL's decompression-bomb check is replaced by check_pixels (a 1 MB PNG can declare
# 32000x32000 pixels): the header is read, the limit applied, nothing decoded.
Image.MAX_IMAGE_PIXELS = None
#: Label of pixels excluded from loss and metrics (padding, ignore value).
IGNORE_LABEL = np.iinfo(np.uint16).max

cv2.setNumThreads(1)  # tf.data runs many decoders in parallel; avoid oversubscription


class DataError(ValueError):
    """The data cannot be used; ``problems`` lists every reason, each naming a file."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the data:\n{lines}")


class MultiPageError(ImageReadError):
    """A multi-page TIFF (a stack) where one image is expected."""

    def __init__(self, path: str | Path, pages: int):
        self.pages = pages
        super().__init__(
            f"{path}: multi-page TIFF with {pages} pages; unet_cbam reads one 2-D image per "
            "file: save each page as its own file (e.g. with tifffile: "
            "[tifffile.imwrite(f'slice{i:02d}.tif', page) for i, page in "
            "enumerate(tifffile.imread(path))])")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the image extensions this tool reads."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_raw(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file as stored: ``(H, W)`` or ``(H, W, C)`` in RGB(A) order, any dtype.

    A file whose header declares more than ``max_pixels`` pixels is refused
    before anything is decoded.

    TIFF files are read with tifffile, which sees every page: a multi-page
    stack raises ``MultiPageError`` (naming the page count) instead of
    silently yielding page 1. Compressions tifffile cannot decode without
    the optional imagecodecs package (LZW, JPEG...) fall back to OpenCV.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read ({error.strerror})") from None
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    check_pixels(path, max_pixels)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        array = _read_tiff(path)
        if array is not None:
            return array
    # imdecode instead of imread: imread fails silently on non-ASCII paths on some systems.
    data = np.fromfile(path, dtype=np.uint8)
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        reason = " ".join(str(error).split())[-200:]
        raise ImageReadError(f"{path}: OpenCV cannot decode it ({reason})") from None
    if array is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def tiff_pages(path: str | Path) -> int:
    """Number of 2-D images in a TIFF file (pages of its first series)."""
    try:
        with tifffile.TiffFile(path) as tiff:
            return len(tiff.series[0].pages) if tiff.series else len(tiff.pages)
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as error:
        raise ImageReadError(f"{path}: not a readable TIFF ({error})") from None


def _read_tiff(path: Path) -> np.ndarray | None:
    """The single page of a TIFF, or None when only OpenCV can decode it."""
    pages = tiff_pages(path)
    if pages != 1:
        raise MultiPageError(path, pages)
    try:
        array = tifffile.imread(path)
    except ValueError as error:
        if "imagecodecs" in str(error):
            return None
        raise ImageReadError(f"{path}: not a readable TIFF ({error})") from None
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar RGB(A)
    return np.ascontiguousarray(array)


def header_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file header, or None where it cannot be read."""
    try:
        if Path(path).suffix.lower() in TIFF_EXTENSIONS:
            with tifffile.TiffFile(path) as tiff:
                return tuple(int(v) for v in tiff.pages[0].shape[:2])
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # PIL does not know every flavour
        return None


def check_pixels(path: str | Path, max_pixels: int | None) -> None:
    """Refuse a file whose header declares more than ``max_pixels`` pixels."""
    size = header_size(path) if max_pixels is not None else None
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageReadError(
            f"{path}: {size[1]}x{size[0]} pixels ({size[0] * size[1] / 1e6:.0f} megapixels) "
            f"is over the limit of {max_pixels / 1e6:.0f} megapixels (--max-pixels); "
            "it is not decoded")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, else by decoding the pixels."""
    size = header_size(path)
    if size is not None:
        return size
    array = read_raw(path)
    return array.shape[0], array.shape[1]


def convert_channels(image: np.ndarray, channels: int, path: str | Path = "") -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` to ``(H, W, channels)``; alpha is dropped."""
    if image.ndim == 2:
        image = image[..., None]
    have = image.shape[2]
    if have == 4 and channels != 4:
        image, have = image[..., :3], 3
    if have == channels:
        return np.ascontiguousarray(image)
    if have == 1:
        return np.repeat(image, channels, axis=2)
    if have == 3 and channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    raise ImageReadError(f"{path}: image has {have} channels, the model takes {channels}")


def read_image(path: str | Path, channels: int,
               normalization: Normalization = BITDEPTH) -> np.ndarray:
    """Read an image as float32 ``(H, W, channels)``: the model's input."""
    return preprocess(read_raw(path), channels, path, normalization)


def preprocess(raw: np.ndarray, channels: int, path: str | Path = "",
               normalization: Normalization = BITDEPTH, standardize: bool = True
               ) -> np.ndarray:
    """The one preprocessing function of training and prediction.

    ``standardize=False`` stops before ``Normalization.standardize`` (training
    augments in between): the image is then in [0, 1].
    """
    image = convert_channels(normalization.to_unit(raw, path), channels, path)
    return normalization.standardize(image) if standardize else image


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(height, width)`` of an image resampled by ``scale`` (at least one pixel)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W[, C])`` float image resampled to ``height x width``, channels kept.

    Pixel-area averaging to shrink (no aliasing), bilinear to enlarge (probability
    maps back to the image's own size). OpenCV takes at most 4 channels at a time.
    """
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if image.ndim == 2:
        return cv2.resize(image, (width, height), interpolation=method)
    parts = [cv2.resize(np.ascontiguousarray(image[..., i:i + 4]), (width, height),
                        interpolation=method).reshape(height, width, -1)
             for i in range(0, image.shape[-1], 4)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """A label map resampled to ``height x width`` (nearest label: no new values)."""
    if labels.shape[:2] == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


# --------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskCodec:
    """How mask files encode classes.

    encoding:
        ``binary``: foreground where value > ``threshold``; written as
        ``values = (background, foreground)``.
        ``indexed``: the pixel value is the class id.
        ``palette``: a palette PNG whose indices are class ids; written with
        ``palette``.
        ``rgb``: ``colors[i]`` is the colour of class ``i``.
    ignore_value / ignore_color: pixels excluded from loss and metrics.
    """

    encoding: str
    num_classes: int
    threshold: int = 0
    values: tuple[int, int] = (0, 255)
    palette: tuple[tuple[int, int, int], ...] | None = None
    colors: tuple[tuple[int, int, int], ...] | None = None
    ignore_value: int | None = None
    ignore_color: tuple[int, int, int] | None = None
    #: rgb: pixels of an unknown colour on the edges between colours are ignored, not
    #: refused (``DataConfig.ignore_edges``).
    ignore_edges: bool = False

    @classmethod
    def from_data_config(cls, data: DataConfig, num_classes: int,
                         encoding: str | None = None,
                         palette: list[list[int]] | None = None) -> MaskCodec:
        """The codec a DataConfig describes (``encoding``/``palette`` override it)."""
        palette = palette if palette is not None else data.palette
        return cls(
            encoding=encoding or data.mask_encoding, num_classes=num_classes,
            # auto is resolved from the masks by training (verify.resolve_binary_threshold);
            # left unresolved (a hand-written config), it is the clean-mask rule: above 0.
            threshold=0 if data.binary_threshold == "auto" else data.binary_threshold,
            values=tuple(data.mask_values) if data.mask_values else (0, 255),
            palette=tuple(tuple(c) for c in palette) if palette else None,
            colors=tuple(tuple(c) for c in data.class_colors) if data.class_colors else None,
            ignore_value=data.ignore_value,
            ignore_color=tuple(data.ignore_color) if data.ignore_color else None,
            ignore_edges=data.ignore_edges)

    @property
    def num_labels(self) -> int:
        """Classes the metrics see: 2 for binary (background, foreground)."""
        return 2 if self.encoding == "binary" else self.num_classes

    def default_class_names(self) -> list[str]:
        """``background, foreground`` for binary masks, else ``class0, class1, ...``."""
        if self.encoding == "binary":
            return ["background", "foreground"]
        return [f"class{i}" for i in range(self.num_labels)]

    def decode(self, raw: np.ndarray, path: str | Path = "") -> np.ndarray:
        """Raw mask pixels -> uint16 class ids with IGNORE_LABEL; raises on bad values."""
        if self.encoding == "rgb":
            return self._decode_rgb(raw, path)
        values = _single_channel(raw, path, self.encoding)
        ignore = values == self.ignore_value if self.ignore_value is not None else None
        if self.encoding == "binary":
            labels = (values > self.threshold).astype(np.uint16)
        else:
            if values.dtype.kind == "f" or values.min() < 0:
                raise ImageReadError(f"{path}: mask values must be non-negative integers")
            bad = values >= self.num_classes
            if ignore is not None:
                bad &= ~ignore
            if bad.any():
                unexpected = np.unique(values[bad])[:10].tolist()
                raise ImageReadError(
                    f"{path}: unexpected mask value(s) {unexpected}; with num_classes "
                    f"{self.num_classes} class ids must be 0..{self.num_classes - 1}"
                    + (f" or the ignore value {self.ignore_value}"
                       if self.ignore_value is not None else ""))
            labels = values.astype(np.uint16)
        if ignore is not None:
            labels[ignore] = IGNORE_LABEL
        return labels

    def _decode_rgb(self, raw: np.ndarray, path) -> np.ndarray:
        if raw.ndim != 3 or raw.shape[2] < 3:
            raise ImageReadError(f"{path}: rgb mask expected, got a single-channel image")
        rgb = raw[..., :3]
        key = pack_colors(rgb)
        labels = np.full(key.shape, IGNORE_LABEL, dtype=np.uint16)
        known = np.zeros(key.shape, dtype=bool)
        table = [(i, c) for i, c in enumerate(self.colors or ())]
        if self.ignore_color is not None:
            table.append((IGNORE_LABEL, self.ignore_color))
        for label, (r, g, b) in table:
            hit = key == ((r << 32) | (g << 16) | b)
            labels[hit] = label
            known |= hit
        unknown = ~known
        if self.ignore_edges and unknown.any():  # antialiased edges: left out, not refused
            unknown &= ~on_edges(key)
        if unknown.any():
            colours = np.unique(rgb[unknown].reshape(-1, 3), axis=0)[:5].tolist()
            where = " (not only on the edges between classes)" if self.ignore_edges else ""
            raise ImageReadError(
                f"{path}: colour(s) {colours} are not in class_colors "
                f"{list(self.colors or [])}{where}")
        return labels

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Class ids ``(H, W)`` -> the array to write (palette indices, colours, ...)."""
        labels = np.asarray(labels)
        if self.encoding == "binary":
            # Built in the written type: np.where with Python ints makes an int64 array,
            # 8 bytes a pixel (2 GiB for a 16384^2 mask).
            dtype = np.uint16 if max(self.values) > 255 else np.uint8
            encoded = np.full(labels.shape, self.values[0], dtype)
            encoded[labels > 0] = self.values[1]
            return encoded
        if self.encoding == "rgb":
            colors = np.asarray(self.colors, dtype=np.uint8)
            return colors[labels]
        dtype = np.uint8 if self.num_classes <= 256 else np.uint16
        return labels if labels.dtype == dtype else labels.astype(dtype)


def pack_colors(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` colours -> ``(H, W)`` int64 keys, one per colour (R, G, B order kept)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 32) | (rgb[..., 1] << 16) | rgb[..., 2]


def on_edges(key: np.ndarray) -> np.ndarray:
    """Pixels of a packed colour image whose 4-neighbourhood holds another colour."""
    edge = np.zeros(key.shape, bool)
    horizontal = key[:, 1:] != key[:, :-1]
    vertical = key[1:, :] != key[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def _single_channel(raw: np.ndarray, path, encoding: str) -> np.ndarray:
    if raw.ndim == 2:
        return raw
    channels = raw[..., :3]
    if (channels == channels[..., :1]).all():
        return channels[..., 0]
    if encoding == "binary":
        return channels.max(axis=-1)
    raise ImageReadError(
        f"{path}: mask has colours; use mask_encoding rgb with class_colors for colour masks")


def read_mask_raw(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS
                  ) -> tuple[np.ndarray, bool]:
    """``(array, is_palette)``: palette PNGs as indices, anything else as decoded."""
    path = Path(path)
    if path.suffix.lower() == ".png" and path.stat().st_size > 0:
        check_pixels(path, max_pixels)
        try:
            with Image.open(path) as image:
                if image.mode == "P":
                    return np.asarray(image), True
        except Exception:
            pass  # read_raw below reports the problem with the file name
    return read_raw(path, max_pixels), False


def read_palette(path: str | Path) -> tuple[tuple[int, int, int], ...]:
    """The RGB palette of a palette PNG."""
    with Image.open(path) as image:
        flat = image.getpalette() or []
    return tuple(tuple(flat[i:i + 3]) for i in range(0, len(flat), 3))


def read_mask(path: str | Path, codec: MaskCodec) -> np.ndarray:
    """Read a mask file as uint16 class ids ``(H, W)`` (IGNORE_LABEL where ignored)."""
    raw, _ = read_mask_raw(path)
    return codec.decode(raw, path)


def write_mask(path: str | Path, labels: np.ndarray, codec: MaskCodec) -> None:
    """Write class ids in the codec's encoding, atomically (see ``atomic_write``)."""
    path = Path(path)
    array = codec.encode(labels)
    if codec.encoding == "palette":
        image = Image.fromarray(array.astype(np.uint8), mode="P")
        flat = [v for color in (codec.palette or ()) for v in color]
        image.putpalette(flat + [0] * (768 - len(flat)))
        with atomic_write(path) as temporary:
            image.save(temporary, format="PNG")
        return
    write_image(path, array)


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Write an RGB(A) or single-channel array with cv2, atomically."""
    path = Path(path)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(path.suffix or ".png", array)
    if not ok:
        raise OSError(f"{path}: cv2 could not encode a {array.dtype} {array.shape} image")
    with atomic_write(path) as temporary:
        Path(temporary).write_bytes(encoded.tobytes())


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, C)`` -> ``(height, width, C)``: padded at the bottom and right by reflection
    (repeated for images smaller than the pad)."""
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h == 0 and pad_w == 0:
        return image
    # Reflection needs the pad to be smaller than the image; repeat it for tiny images.
    mode = "reflect" if pad_h < image.shape[0] and pad_w < image.shape[1] else "symmetric"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
