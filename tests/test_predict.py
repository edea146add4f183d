import csv
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tifffile

from helpers import make_untrained_run
from unet_cbam.cli.predict import main as predict_main
from unet_cbam.config import InferenceConfig, ModelConfig, RunConfig, load_yaml, save_yaml
from unet_cbam.data.io import MaskCodec, read_image, read_mask, read_mask_raw, read_raw
from unet_cbam.files import is_temporary
from unet_cbam.inference import probabilities_to_labels
from unet_cbam.inputs import list_inputs
from unet_cbam.loading import load_run
from unet_cbam.models import build_unet
from unet_cbam.predict import BatchPredictor, OutputOptions
from unet_cbam.run import CONFIG_FILE
from unet_cbam.shards import parse_shard, take_shard


def _make_run(folder, num_classes=1, encoding="binary", **data):
    """A run folder with an untrained RGB model: enough to exercise the batch job."""
    run = make_untrained_run(folder, channels=3, num_classes=num_classes, **data)
    if encoding != ("binary" if num_classes == 1 else "indexed"):
        config = load_yaml(RunConfig, run / CONFIG_FILE)
        config.data.mask_encoding = encoding
        save_yaml(config, run / CONFIG_FILE)
    return run


def _images(folder, sizes=((40, 52), (64, 64), (17, 90))):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, size in enumerate(sizes):
        cv2.imwrite(str(folder / f"img{index}.png"), rng.integers(0, 256, size + (3,), np.uint8))
    return folder


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file()}


def test_masks_keep_size_encoding_and_round_trip(tmp_path):
    run = load_run(_make_run(tmp_path / "run"))
    images = _images(tmp_path / "in")
    predictor = BatchPredictor(run, InferenceConfig(tile_size=32, overlap=0.25), tmp_path / "out")
    result = predictor.run_files(list_inputs(images), progress=False)
    assert [item.status for item in result.items] == ["ok"] * 3
    for source in sorted(images.iterdir()):
        mask_path = tmp_path / "out" / source.name
        raw, _ = read_mask_raw(mask_path)
        image = read_image(source, 3)
        assert raw.shape == image.shape[:2]
        assert set(np.unique(raw).tolist()) <= {0, 255}
        expected = probabilities_to_labels(predictor.predict_image(image), 0.5)
        np.testing.assert_array_equal(read_mask(mask_path, run.codec), expected)
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert summary[0] == "file,status,mask,height,width,seconds,foreground_fraction,error"
    assert len(summary) == 4


def test_palette_runs_write_palette_masks(tmp_path):
    palette = [[0, 0, 0], [200, 10, 10], [10, 200, 10]]
    run = load_run(_make_run(tmp_path / "run", num_classes=3, encoding="palette",
                             palette=palette))
    images = _images(tmp_path / "in", sizes=((33, 47),))
    options = OutputOptions(save_probabilities=True, probability_format="npy",
                            save_overlays=True)
    BatchPredictor(run, InferenceConfig(), tmp_path / "out", options).run_files(
        list_inputs(images), progress=False)
    raw, is_palette = read_mask_raw(tmp_path / "out" / "img0.png")
    assert is_palette and raw.shape == (33, 47) and raw.max() < 3
    probabilities = np.load(tmp_path / "out" / "probabilities" / "img0.npy")
    assert probabilities.shape == (33, 47, 3)
    chosen = np.take_along_axis(probabilities, raw[..., None].astype(np.int64), -1)[..., 0]
    np.testing.assert_allclose(chosen, probabilities.max(-1), atol=1e-3)  # float16 ties
    overlay = read_raw(tmp_path / "out" / "overlays" / "img0.png")
    assert overlay.shape[1] == 47 and overlay.shape[0] > 33  # image plus legend strip


def test_bad_input_is_reported_and_the_others_are_written(tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (images / "empty.tif").write_bytes(b"")
    code = predict_main(["--model", str(run), "--input", str(images), "--output",
                         str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "3 predicted, 0 already done, 2 failed" in captured.out
    assert "broken.png: not a readable image" in captured.err
    assert "empty.tif: empty file" in captured.err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == \
        ["img0.png", "img1.png", "img2.png"]
    summary = (tmp_path / "out" / "summary.csv").read_text()
    assert "broken.png,failed" in summary


def test_resume_skips_finished_outputs_and_overwrite_redoes_them(tmp_path):
    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["--model", str(run), "--input", str(images), "--output", str(out), "--quiet"]
    assert predict_main(argv) == 0
    (out / "img1.png").unlink()
    before = (out / "img0.png").stat().st_mtime_ns
    result_lines = []
    assert predict_main(argv) == 0
    result_lines = (out / "summary.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in result_lines[1:]] == ["skipped", "ok", "skipped"]
    assert (out / "img0.png").stat().st_mtime_ns == before
    assert predict_main(argv + ["--overwrite"]) == 0
    assert (out / "img0.png").stat().st_mtime_ns != before
    # Asking for an extra output makes finished items incomplete again.
    assert predict_main(argv + ["--save-overlays"]) == 0
    assert len(list((out / "overlays").glob("*.png"))) == 3


def test_interrupted_run_leaves_no_partial_files(tmp_path, monkeypatch):
    run = load_run(_make_run(tmp_path / "run"))
    images = _images(tmp_path / "in", sizes=((32, 32),) * 5)
    out = tmp_path / "out"
    predictor = BatchPredictor(run, InferenceConfig(), out, OutputOptions(save_overlays=True))
    calls = {"count": 0}
    original = BatchPredictor.predict_raw

    def dying(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C, or the job was killed
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BatchPredictor, "predict_raw", dying)
    with pytest.raises(KeyboardInterrupt):
        predictor.run_files(list_inputs(images), progress=False)
    monkeypatch.undo()
    finished = sorted(p.name for p in out.glob("*.png"))
    assert finished == ["img0.png", "img1.png"]
    assert not [p for p in out.rglob("*") if is_temporary(p)]
    for path in out.rglob("*.png"):  # every file that exists is complete
        assert read_raw(path) is not None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    abandoned = out / f".unet_cbam-{dead}-img2.png.x1y2.tmp.png"  # what a SIGKILL could leave
    abandoned.write_bytes(b"half")
    users = out / ".notes.tmp"  # a user's file that merely looks temporary
    users.write_text("keep me")
    result = BatchPredictor(run, InferenceConfig(), out, OutputOptions(save_overlays=True)) \
        .run_files(list_inputs(images), progress=False)
    assert [i.status for i in result.items] == ["skipped", "skipped", "ok", "ok", "ok"]
    assert not abandoned.exists() and users.read_text() == "keep me"
    assert not [p for p in out.rglob("*") if is_temporary(p)]


def test_an_output_folder_holding_inputs_is_refused_and_nothing_is_touched(tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in")
    cv2.imwrite(str(images / "b_mask.png"), np.zeros((16, 16, 3), np.uint8))  # a real image
    before = _digest(images)
    for spec in (str(images), f"{images}/*.png"):
        argv = ["--model", str(run), "--input", spec, "--output", str(images), "--quiet",
                "--overwrite"]
        assert predict_main(argv) == 2
        assert f"{images}: holds 4 of the input images" in capsys.readouterr().err
        assert _digest(images) == before and sorted(os.listdir(images)) == sorted(before)
    # b_mask.png is an input like any other
    assert images / "b_mask.png" in list_inputs(images)


def test_unusable_output_truth_and_model_get_one_clear_line(tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in", sizes=((16, 16),))
    base = ["--model", str(run), "--input", str(images), "--quiet"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["--output", str(a_file)], f"{a_file}: is a file, not a folder"),
        (["--output", str(a_file / "sub")], f"{a_file / 'sub'}: cannot write there"),
        (["--output", str(tmp_path / "o"), "--truth", str(tmp_path / "nope")],
         f"{tmp_path / 'nope'}: --truth folder not found"),
    ]
    for extra, message in cases:
        assert predict_main(base + extra) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.yaml").write_text((run / "config.yaml").read_text())
    (corrupt / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    assert predict_main(["--model", str(corrupt), "--input", str(images), "--output",
                         str(tmp_path / "o2")]) == 2
    assert "model.keras: not a readable .keras model file" in capsys.readouterr().err

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "config.yaml").write_text((run / "config.yaml").read_text())
    with zipfile.ZipFile(run / "model.keras") as source, \
            zipfile.ZipFile(hostile / "model.keras", "w") as target:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1].update(module="subprocess", class_name="Popen",
                                                     registered_name=None)
                data = json.dumps(config).encode()
            target.writestr(entry, data)
    assert predict_main(["--model", str(hostile), "--input", str(images), "--output",
                         str(tmp_path / "o3")]) == 2
    error = capsys.readouterr().err
    assert "model.keras: cannot load the model in safe mode" in error
    assert "Traceback" not in error


def test_summary_rows_for_skipped_and_failed_items_and_messages_name_the_path_once(tmp_path,
                                                                                    capsys):
    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    out = tmp_path / "out"
    argv = ["--model", str(run), "--input", str(images), "--output", str(out), "--quiet"]
    assert predict_main(argv) == 1
    first = {row["file"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    capsys.readouterr()
    assert predict_main(argv) == 1
    error = capsys.readouterr().err
    broken = images / "broken.png"
    assert f"failed: {broken}: not a readable image" in error
    assert f"{broken}: {broken}" not in error
    rows = {row["file"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    assert rows[str(broken)]["status"] == "failed" and rows[str(broken)]["mask"] == ""
    for name in ("img0.png", "img1.png", "img2.png"):
        row, before = rows[str(images / name)], first[str(images / name)]
        assert row["status"] == "skipped"
        assert (row["height"], row["width"]) == (before["height"], before["width"])
        assert float(row["foreground_fraction"]) == pytest.approx(
            float(before["foreground_fraction"]), abs=1e-6)


def test_a_glob_through_a_symlink_loop_lists_each_image_once(tmp_path):
    images = _images(tmp_path / "in" / "a", sizes=((8, 8), (8, 8)))
    (images / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    found = list_inputs(f"{tmp_path / 'in'}/**/*.png")
    assert found == [images / "img0.png", images / "img1.png"]
    assert list_inputs(tmp_path / "in") == found


def test_same_stem_twice_is_reported(tmp_path):
    run = load_run(_make_run(tmp_path / "run"))
    images = _images(tmp_path / "in", sizes=((16, 16),))
    cv2.imwrite(str(images / "img0.jpg"), np.zeros((16, 16, 3), np.uint8))
    result = BatchPredictor(run, InferenceConfig(), tmp_path / "out").run_files(
        list_inputs(images), progress=False)
    assert [(i.file.name, i.status) for i in result.items] == [("img0.jpg", "ok"),
                                                               ("img0.png", "failed")]
    assert "img0.png is already written for img0.jpg" in result.failed[0].error


def test_shards_split_the_sorted_list(tmp_path):
    files = [tmp_path / f"{i:03d}.png" for i in range(10)]
    parts = [take_shard(files, i, 3) for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == files
    assert not set(parts[0]) & set(parts[1])
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(ValueError, match="I/N"):
        parse_shard("two")
    with pytest.raises(ValueError, match="between 1 and N"):
        parse_shard("4/3")


def test_missing_config_is_explained(tmp_path):
    build_unet(ModelConfig(num_classes=1, depth=2, base_filters=4)).save(tmp_path / "alone.keras")
    with pytest.raises(FileNotFoundError, match="needs the run's config.yaml"):
        load_run(tmp_path / "alone.keras")


def test_tiled_prediction_agrees_with_whole_image_prediction_on_isbi(isbi_run, isbi_dir,
                                                                     tmp_path):
    run = load_run(isbi_run)
    image = read_image(isbi_dir / "images" / "slice24.png", 1)
    whole = run.model.predict(image[None], verbose=0)[0]
    predictor = BatchPredictor(run, InferenceConfig(tile_size=256, overlap=0.5), tmp_path)
    tiled = predictor.predict_image(image)
    assert tiled.shape == whole.shape == (512, 512, 1)
    difference = np.abs(tiled - whole)
    assert difference.mean() < 0.01, difference.mean()
    agreement = (probabilities_to_labels(tiled) == probabilities_to_labels(whole)).mean()
    assert agreement > 0.99
    assert 0.05 < (whole < 0.5).mean() < 0.6  # the model does predict membrane


@pytest.mark.slow
def test_predict_with_truth_attention_and_tta(isbi_run, isbi_dir, tmp_path):
    out = tmp_path / "out"
    code = predict_main(["--model", str(isbi_run), "--input",
                         str(isbi_dir / "images" / "slice2[45].png"), "--output", str(out),
                         "--truth", str(isbi_dir / "masks"), "--save-attention", "--tta",
                         "--tile-size", "256", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in (out / "attention").iterdir()) == ["slice24.png",
                                                                     "slice25.png"]
    import json
    report = json.loads((out / "evaluation.json").read_text())
    assert report["images"] == 2
    assert report["classes"]["membrane"]["mean_dice"] > 0.4
    raw, _ = read_mask_raw(out / "slice24.png")
    assert set(np.unique(raw).tolist()) == {0, 255}  # ISBI's own values
    keras.backend.clear_session()


def test_load_run_uses_safe_mode(tmp_path, monkeypatch):
    calls = []
    original = keras.saving.load_model

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy)
    load_run(_make_run(tmp_path / "run"))
    assert calls and calls[0]["safe_mode"] is True and calls[0]["compile"] is False


def test_codec_comes_from_the_run(tmp_path):
    run = load_run(_make_run(tmp_path / "run", mask_values=[0, 1]))
    assert run.codec == MaskCodec("binary", 1, values=(0, 1))


def test_outputs_mirror_the_input_tree(tmp_path):
    run = _make_run(tmp_path / "run")
    source = tmp_path / "in"
    _images(source / "a", sizes=((32, 32),))
    _images(source / "b" / "deep", sizes=((32, 48),))
    _images(source, sizes=((16, 16),))                      # in/img0.png beside the folders
    out = tmp_path / "out"
    argv = ["--model", str(run), "--input", str(source), "--output", str(out), "--quiet",
            "--save-overlays"]
    assert predict_main(argv) == 0
    masks = sorted(str(p.relative_to(out)) for p in out.rglob("*.png")
                   if "overlays" not in p.parts)
    assert masks == ["a/img0.png", "b/deep/img0.png", "img0.png"]
    assert (out / "overlays" / "b" / "deep" / "img0.png").is_file()
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",ok," in row for row in rows[1:])
    # a recursive glob mirrors the tree below its fixed part
    out2 = tmp_path / "out2"
    assert predict_main(["--model", str(run), "--input", f"{source}/**/img0.png",
                         "--output", str(out2), "--quiet"]) == 0
    assert sorted(str(p.relative_to(out2)) for p in out2.rglob("*.png")) == masks


def test_an_output_folder_inside_the_input_folder_is_not_read_back(tmp_path):
    run = _make_run(tmp_path / "run")
    source = _images(tmp_path / "in", sizes=((32, 32), (32, 32)))
    out = source / "masks"
    argv = ["--model", str(run), "--input", str(source), "--output", str(out), "--quiet"]
    assert predict_main(argv) == 0
    assert predict_main(argv) == 0  # the second run must not predict masks of masks
    assert sorted(p.name for p in out.rglob("*.png")) == ["img0.png", "img1.png"]
    assert list_inputs(source, out) == [source / "img0.png", source / "img1.png"]


def test_a_multi_page_tiff_is_reported_and_the_batch_goes_on(tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    source = _images(tmp_path / "in", sizes=((32, 32),))
    tifffile.imwrite(source / "stack.tif", np.zeros((5, 32, 32), np.uint8))
    out = tmp_path / "out"
    code = predict_main(["--model", str(run), "--input", str(source), "--output", str(out),
                         "--quiet"])
    assert code == 1
    assert "stack.tif: multi-page TIFF with 5 pages" in capsys.readouterr().err
    assert (out / "img0.png").is_file() and not (out / "stack.png").exists()


def test_an_image_declaring_too_many_pixels_is_skipped_without_decoding(tmp_path, capsys):
    from helpers import png_header_only

    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in", sizes=((16, 16),))
    png_header_only(images / "bomb.png", 40000, 40000)
    code = predict_main(["--model", str(run), "--input", str(images), "--output",
                         str(tmp_path / "out"), "--quiet"])
    assert code == 1
    error = capsys.readouterr().err
    assert f"failed: {images / 'bomb.png'}: 40000x40000 pixels (1600 megapixels) is over " \
        "the limit of 1074 megapixels (--max-pixels); it is not decoded" in error
    png_header_only(images / "bomb.png", 2000, 2000)
    assert predict_main(["--model", str(run), "--input", str(images), "--output",
                         str(tmp_path / "out2"), "--quiet", "--max-pixels", "1000000"]) == 1
    error = capsys.readouterr().err
    assert f"failed: {images / 'bomb.png'}: 2000x2000 pixels (4 megapixels) is over " \
        "the limit of 1 megapixels" in error
    assert (tmp_path / "out2" / "img0.png").is_file()


@pytest.mark.slow
def test_the_command_line_starts_quietly(tmp_path):
    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in", sizes=((16, 16),))
    command = [sys.executable, "predict.py", "--model", str(run), "--input", str(images),
               "--output", str(tmp_path / "out"), "--quiet"]
    root = Path(__file__).resolve().parents[1]
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    for noise in ("absl::InitializeLog", "cuda drivers", "cuInit", "oneDNN", "cpu_feature_guard"):
        assert noise not in completed.stderr, completed.stderr
    verbose = subprocess.run(command + ["--verbose", "--overwrite"], cwd=root,
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0
    assert "DEBUG unet_cbam: TensorFlow 2." in verbose.stderr


def test_streamed_prediction_equals_whole_image_prediction(tmp_path):
    from unet_cbam.data.io import preprocess

    run = load_run(_make_run(tmp_path / "run"))
    raw = np.random.default_rng(3).integers(0, 256, (150, 230, 3), np.uint8)
    predictor = BatchPredictor(run, InferenceConfig(tile_size=64, overlap=0.5))
    labels, probabilities = predictor.predict_raw(raw, keep_probabilities=True)
    expected = predictor.predict_image(preprocess(raw, 3))
    np.testing.assert_array_equal(probabilities, expected)
    np.testing.assert_array_equal(labels, probabilities_to_labels(expected))
    assert labels.dtype == np.uint8
    assert predictor.predict_raw(raw)[1] is None


def test_a_full_disk_fails_the_items_it_hits_and_the_batch_reports_them(tmp_path, monkeypatch,
                                                                        capsys):
    import errno

    import unet_cbam.predict as predict_module

    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    original = predict_module.write_mask

    def full_disk(path, labels, codec):
        if path.name == "img1.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, labels, codec)

    monkeypatch.setattr(predict_module, "write_mask", full_disk)
    previous = os.umask(0o022)
    try:
        code = predict_main(["--model", str(run), "--input", str(images), "--output", str(out),
                             "--quiet"])
    finally:
        os.umask(previous)
    assert code == 1
    error = capsys.readouterr().err
    assert f"failed: {images / 'img1.png'}: writing: [Errno 28] No space left on device" in error
    rows = {row["file"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    assert rows[str(images / "img1.png")]["status"] == "failed"
    assert rows[str(images / "img1.png")]["mask"] == ""
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img2.png"]
    assert not [p for p in out.rglob("*") if is_temporary(p)]
    # files get the mode the umask gives, like any file a user's program writes
    for path in (out / "img0.png", out / "summary.csv"):
        assert path.stat().st_mode & 0o777 == 0o644


def test_a_summary_that_cannot_be_written_is_reported(tmp_path, monkeypatch, capsys):
    import errno

    import unet_cbam.summary as summary_module

    run = _make_run(tmp_path / "run")
    images = _images(tmp_path / "in", sizes=((16, 16),))

    def refuse(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(summary_module, "write_text", refuse)
    code = predict_main(["--model", str(run), "--input", str(images), "--output",
                         str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "summary.csv: cannot write the summary (No space left on device)" in captured.err
    assert "summary: not written" in captured.out
    assert (tmp_path / "out" / "img0.png").is_file()
