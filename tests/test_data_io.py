import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_cbam.data.io import (
    IGNORE_LABEL,
    ImageReadError,
    MaskCodec,
    MultiPageError,
    read_image,
    read_mask,
    read_mask_raw,
    read_palette,
    read_raw,
    tiff_pages,
    write_mask,
)
from unet_cbam.files import atomic_write


def test_16_bit_tiff_is_normalised_by_its_bit_depth(tmp_path):
    raw = np.array([[0, 65535], [32768, 1000]], np.uint16)
    path = tmp_path / "a.tif"
    cv2.imwrite(str(path), raw)
    image = read_image(path, channels=1)
    assert image.shape == (2, 2, 1) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], raw / 65535.0, rtol=1e-6)
    assert read_image(path, channels=3).shape == (2, 2, 3)


def test_rgba_png_drops_alpha_and_keeps_rgb_order(tmp_path):
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 7
    path = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = read_image(path, channels=3)
    assert image.shape == (3, 4, 3)
    np.testing.assert_allclose(image[0, 0], np.array([10, 20, 30]) / 255.0, rtol=1e-6)
    gray = read_image(path, channels=1)
    expected = (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255.0
    assert gray[0, 0, 0] == pytest.approx(expected, abs=1 / 255)


def test_palette_png_reads_indices_not_colours(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    path = tmp_path / "m.png"
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (768 - 9))
    image.save(path)
    raw, is_palette = read_mask_raw(path)
    assert is_palette
    np.testing.assert_array_equal(raw, indices)
    codec = MaskCodec("palette", num_classes=3, palette=read_palette(path)[:3])
    np.testing.assert_array_equal(read_mask(path, codec), indices)
    assert codec.palette[1] == (255, 0, 0)


def test_binary_threshold_covers_instances_and_255(tmp_path):
    raw = np.array([[0, 1, 255, 7]], np.uint8)
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), raw)
    np.testing.assert_array_equal(read_mask(path, MaskCodec("binary", 1)), [[0, 1, 1, 1]])
    np.testing.assert_array_equal(read_mask(path, MaskCodec("binary", 1, threshold=5)),
                                  [[0, 0, 1, 1]])


def test_ignore_value_and_16_bit_indexed(tmp_path):
    raw = np.array([[0, 300, 2], [1, 300, 0]], np.uint16)
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), raw)
    labels = read_mask(path, MaskCodec("indexed", 3, ignore_value=300))
    np.testing.assert_array_equal(labels, [[0, IGNORE_LABEL, 2], [1, IGNORE_LABEL, 0]])


def test_unexpected_value_names_file_and_values(tmp_path):
    path = tmp_path / "bad.png"
    cv2.imwrite(str(path), np.array([[0, 1, 5]], np.uint8))
    with pytest.raises(ImageReadError, match=r"bad.png: unexpected mask value\(s\) \[5\]"):
        read_mask(path, MaskCodec("indexed", 3))


def test_rgb_masks_map_colours_and_refuse_unknown_ones(tmp_path):
    colors = ((0, 0, 0), (255, 0, 0), (0, 0, 255))
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [0, 0, 255], [9, 9, 9]]], np.uint8)
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    codec = MaskCodec("rgb", 3, colors=colors, ignore_color=(9, 9, 9))
    np.testing.assert_array_equal(read_mask(path, codec), [[0, 1, 2, IGNORE_LABEL]])
    with pytest.raises(ImageReadError, match=r"m.png: colour\(s\) \[\[9, 9, 9\]\]"):
        read_mask(path, MaskCodec("rgb", 3, colors=colors))


@pytest.mark.parametrize("codec", [
    MaskCodec("binary", 1, values=(0, 255)),
    MaskCodec("binary", 1, values=(0, 1)),
    MaskCodec("indexed", 4),
    MaskCodec("indexed", 300),
    MaskCodec("palette", 4, palette=((0, 0, 0), (10, 20, 30), (1, 2, 3), (4, 5, 6))),
    MaskCodec("rgb", 4, colors=((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255))),
])
def test_written_masks_read_back_to_the_same_labels(tmp_path, codec):
    labels = np.random.default_rng(0).integers(0, codec.num_labels, (17, 23)).astype(np.uint16)
    if codec.num_classes == 300:
        labels[0, 0] = 299
    path = tmp_path / "out.png"
    write_mask(path, labels, codec)
    np.testing.assert_array_equal(read_mask(path, codec), labels)
    if codec.encoding == "binary":
        assert set(np.unique(read_mask_raw(path)[0])) <= set(codec.values)
    if codec.encoding == "palette":
        assert read_mask_raw(path)[1] is True


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"this is not an image", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
])
def test_unreadable_files_are_named(tmp_path, content, message):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=f"broken.png: {message}"):
        read_image(path, 3)


def test_channel_mismatch_is_named(tmp_path):
    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ImageReadError, match="rgb.png: image has 3 channels, the model takes 2"):
        read_image(path, 2)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_multi_page_tiff_is_an_error_naming_the_file_and_page_count(tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (30, 16, 16), np.uint8)
    path = tmp_path / "train-volume.tif"
    tifffile.imwrite(path, stack)
    assert tiff_pages(path) == 30
    with pytest.raises(MultiPageError, match=r"train-volume.tif: multi-page TIFF with 30 pages"):
        read_raw(path)
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, stack[3])
    np.testing.assert_array_equal(read_raw(single), stack[3])


def test_rgb_tiff_through_tifffile_keeps_rgb_order(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint16)
    rgb[..., 0] = 60000
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = read_image(tmp_path / "rgb.tif", channels=3)
    np.testing.assert_allclose(image[0, 0], [60000 / 65535, 0, 0], rtol=1e-6)


def test_compressed_tiff_that_tifffile_cannot_decode_falls_back_to_opencv(tmp_path):
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    path = tmp_path / "lzw.tif"
    cv2.imwrite(str(path), raw, [cv2.IMWRITE_TIFF_COMPRESSION, 5])  # LZW
    np.testing.assert_array_equal(read_raw(path), raw)


def test_float_images_must_be_in_0_1(tmp_path):
    picture = np.linspace(0, 255, 12, dtype=np.float32).reshape(3, 4)
    tifffile.imwrite(tmp_path / "f255.tif", picture)
    with pytest.raises(ImageReadError, match=r"f255.tif: float image with values in \[0, 255\]; "
                                             "float images must be scaled to \\[0, 1\\]"):
        read_image(tmp_path / "f255.tif", channels=1)
    tifffile.imwrite(tmp_path / "f01.tif", picture / 255)
    np.testing.assert_allclose(read_image(tmp_path / "f01.tif", 1)[..., 0], picture / 255,
                               rtol=1e-6)
    nan = picture / 255
    nan[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        read_image(tmp_path / "nan.tif", 1)


def test_codec_defaults_and_data_config():
    from unet_cbam.config import DataConfig

    codec = MaskCodec.from_data_config(
        DataConfig(mask_encoding="rgb", class_colors=[[0, 0, 0], [9, 9, 9]], ignore_value=None,
                   ignore_color=[1, 2, 3]), 2)
    assert codec.colors == ((0, 0, 0), (9, 9, 9)) and codec.ignore_color == (1, 2, 3)
    assert codec.default_class_names() == ["class0", "class1"]
    assert MaskCodec("binary", 1).default_class_names() == ["background", "foreground"]
