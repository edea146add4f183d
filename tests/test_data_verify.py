import cv2
import numpy as np
import pytest

from helpers import write_pairs
from unet_cbam.config import DataConfig
from unet_cbam.data.io import MaskCodec
from unet_cbam.data.verify import DataError, detect_codec, find_pairs, verify_pairs


def _verify(root, codec=None, channels=3, **kwargs):
    samples, problems = find_pairs(root / "images", root / "masks")
    codec = codec or MaskCodec("binary", 1)
    report = verify_pairs(samples, codec, channels, progress=False, **kwargs)
    return problems + report.problems, report


def test_clean_data_passes_with_statistics(tmp_path):
    write_pairs(tmp_path, count=3, size=(8, 10))
    problems, report = _verify(tmp_path)
    assert problems == []
    assert [s.stem for s in report.samples] == ["p0", "p1", "p2"]
    assert report.class_pixels.sum() == 3 * 80
    assert report.info["p0"].height == 8 and report.info["p0"].width == 10
    assert report.binary_values() == (0, 255)


def test_bad_input_corpus_lists_every_problem_with_its_file(tmp_path):
    write_pairs(tmp_path, count=8, size=(16, 16), mask_values=(0, 1, 2))
    images, masks = tmp_path / "images", tmp_path / "masks"
    (masks / "p0.png").unlink()                                     # missing mask
    cv2.imwrite(str(masks / "orphan.png"), np.zeros((16, 16), np.uint8))  # orphan mask
    cv2.imwrite(str(masks / "p1.png"), np.zeros((12, 16), np.uint8))     # size mismatch
    (images / "p2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # corrupt
    (images / "p3.png").write_bytes(b"")                                  # zero bytes
    (masks / "p4.png").write_text("I am a text file")                     # not an image
    cv2.imwrite(str(masks / "p5.png"), np.full((16, 16), 9, np.uint8))    # value 9

    problems, report = _verify(tmp_path, MaskCodec("indexed", 3))
    text = "\n".join(problems)
    expected = [
        f"{images / 'p0.png'}: no mask named p0.*",
        f"{masks / 'orphan.png'}: mask without an image",
        f"{masks / 'p1.png'}: mask is 16x12 pixels but its image p1.png is 16x16",
        f"{images / 'p2.png'}: not a readable image",
        f"{images / 'p3.png'}: empty file (0 bytes)",
        f"{masks / 'p4.png'}: not a readable image",
        f"{masks / 'p5.png'}: unexpected mask value(s) [9]",
    ]
    for line in expected:
        assert line in text, f"missing problem: {line}\n{text}"
    assert len(problems) == len(expected)
    assert [s.stem for s in report.samples] == ["p6", "p7"]
    report.problems = problems
    with pytest.raises(DataError, match=r"7 problem\(s\) in the data:\n  - ") as error:
        report.raise_for_problems()
    assert error.value.problems == problems


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    _, problems = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert problems == [f"{tmp_path / 'images'}: no images (.png, .jpg, .jpeg, .tif, .tiff, .bmp)",
                        f"{tmp_path / 'masks'}: no masks (.png, .jpg, .jpeg, .tif, .tiff, .bmp)"]
    _, problems = find_pairs(tmp_path / "nope", tmp_path / "masks")
    assert problems == [f"{tmp_path / 'nope'}: image folder not found"]


def test_duplicate_stems_are_ambiguous(tmp_path):
    write_pairs(tmp_path, count=1)
    cv2.imwrite(str(tmp_path / "images" / "p0.jpg"), np.zeros((4, 4, 3), np.uint8))
    samples, problems = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert "several files share the stem 'p0': p0.jpg, p0.png" in problems[0]


def test_jpeg_masks_get_a_warning(tmp_path):
    write_pairs(tmp_path, count=1)
    mask = cv2.imread(str(tmp_path / "masks" / "p0.png"), cv2.IMREAD_UNCHANGED)
    (tmp_path / "masks" / "p0.png").unlink()
    cv2.imwrite(str(tmp_path / "masks" / "p0.jpg"), mask)
    problems, report = _verify(tmp_path)
    assert problems == []
    assert "lossy JPEG" in report.warnings[0] and "p0.jpg" in report.warnings[0]


def test_detect_codec(tmp_path):
    write_pairs(tmp_path / "bin", count=1, mask_values=(0, 1))
    samples, _ = find_pairs(tmp_path / "bin" / "images", tmp_path / "bin" / "masks")
    assert detect_codec(samples, DataConfig(), num_classes=1).encoding == "binary"
    assert detect_codec(samples, DataConfig(), num_classes=3).encoding == "indexed"
    _, report = _verify(tmp_path / "bin")
    assert report.binary_values() == (0, 1)

    root = write_pairs(tmp_path / "rgb", count=1)
    cv2.imwrite(str(root / "masks" / "p0.png"), np.dstack([np.zeros((32, 40), np.uint8),
                                                            np.zeros((32, 40), np.uint8),
                                                            np.full((32, 40), 200, np.uint8)]))
    samples, _ = find_pairs(root / "images", root / "masks")
    with pytest.raises(DataError, match="colour mask; give class_colors"):
        detect_codec(samples, DataConfig(), num_classes=2)
    codec = detect_codec(samples, DataConfig(class_colors=[[0, 0, 0], [200, 0, 0]]),
                         num_classes=2)
    assert codec.encoding == "rgb"


def test_cache_is_kept_only_when_it_fits(tmp_path):
    write_pairs(tmp_path, count=2, size=(8, 8))
    _, report = _verify(tmp_path, cache_bytes=1e6)
    assert set(report.cache) == {"p0", "p1"}
    image, labels = report.cache["p0"]
    assert image.shape == (8, 8, 3) and labels.shape == (8, 8)
    _, report = _verify(tmp_path, cache_bytes=100)
    assert report.cache is None


def test_a_multi_page_tiff_is_a_verification_problem(tmp_path):
    import tifffile

    write_pairs(tmp_path, count=2, size=(16, 16))
    tifffile.imwrite(tmp_path / "images" / "p1.tif", np.zeros((5, 16, 16), np.uint8))
    (tmp_path / "images" / "p1.png").unlink()
    problems, _ = _verify(tmp_path)
    assert len(problems) == 1
    assert "p1.tif: multi-page TIFF with 5 pages" in problems[0]


def test_a_palette_mask_among_plain_masks_is_a_problem_naming_it(tmp_path):
    from PIL import Image

    write_pairs(tmp_path, count=4, size=(16, 16))
    odd = tmp_path / "masks" / "p2.png"
    labels = (cv2.imread(str(odd), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8)
    image = Image.fromarray(labels, mode="P")
    image.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 drawn white
    image.save(odd)
    problems, report = _verify(tmp_path)
    assert problems == [f"{odd}: a palette PNG among plain masks: its pixels are palette "
                        "indices, not the values the other masks hold; save it like the others"]
    assert [s.stem for s in report.samples] == ["p0", "p1", "p3"]


def test_binary_masks_with_more_than_two_values_get_a_warning(tmp_path):
    write_pairs(tmp_path, count=2, size=(16, 16), mask_values=(0, 1, 2, 7))
    problems, report = _verify(tmp_path)
    assert problems == []
    assert report.warnings == [
        "binary masks hold more than two values (0, 1, 2, 7): every value above 0 is "
        "foreground. If these are class ids, train with --num-classes N (indexed masks); "
        "instance labels are fine as they are"]
    write_pairs(tmp_path / "two", count=2, size=(16, 16), mask_values=(0, 255))
    assert _verify(tmp_path / "two")[1].warnings == []


def test_an_image_declaring_too_many_pixels_is_a_problem_not_a_crash(tmp_path):
    from helpers import png_header_only

    write_pairs(tmp_path, count=3, size=(16, 16))
    huge = png_header_only(tmp_path / "images" / "p1.png", 100000, 100000)
    (tmp_path / "masks" / "p2.png").unlink()   # and another problem, listed with it
    problems, _ = _verify(tmp_path)
    assert any(p.startswith(f"{huge}: 100000x100000 pixels (10000 megapixels) is over the "
                            "limit of 1074 megapixels") for p in problems), problems
    assert any("p2.png: no mask named p2" in p for p in problems)
    # a lower limit applies to ordinary images too
    problems, _ = _verify(tmp_path, max_pixels=100)
    assert any("p0.png: 16x16 pixels (0 megapixels) is over the limit" in p for p in problems)
