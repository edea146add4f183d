"""How much do a trained model's attention gates vary, and with what?

A channel gate that is the same for every image is a fixed per-channel scale,
which the decoder convolution after the skip can absorb: it adds nothing a
model without attention cannot learn. This script measures, for each
attention level of each run, how the gates vary across channels, across
images and (for the spatial map) across pixels:

    python -m benchmarks.datasets --data-sets kvasir --seeds 1 --work runs/kvasir
    python -m benchmarks.attention_stats runs/kvasir/kvasir-default-seed1

By default on each run's own validation images (its split.json; never a test
split), prepared as predict.py prepares them (the run's normalisation and
training resolution), one image at a time so sizes may differ; ``--images``
measures on given files instead. Prints a table and writes
benchmarks/results/attention_stats/attention_stats.json.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.common import RESULTS, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem


def gate_statistics(maps: dict) -> list[dict]:
    """Per level: spreads of the channel gates and the spatial map (see the module docstring).

    ``maps`` is ``attention_maps``' output, ``{level: {"channel": (N, C), "spatial":
    (N, h, w)}}``; the spatial maps may also be a list of N ``(h, w)`` arrays of
    different sizes (images of different sizes), pooled over all their pixels.
    """
    rows = []
    for level, gates in sorted(maps.items()):
        row: dict = {"level": level}
        if "channel" in gates:
            channel = np.asarray(gates["channel"])  # (N, C)
            row.update({
                "channels": channel.shape[1],
                "channel_mean": float(channel.mean()),
                "channel_below_half": float((channel < 0.5).mean()),
                # how different the channels' (image-averaged) gates are from each other
                "channel_std_across_channels": float(channel.mean(axis=0).std()),
                # how much one channel's gate changes from image to image
                "channel_std_across_images": float(channel.std(axis=0).mean()),
            })
        if "spatial" in gates:
            spatial = [np.asarray(one) for one in gates["spatial"]]  # N x (h, w)
            pixels = np.concatenate([one.ravel() for one in spatial])
            row.update({
                "spatial_mean": float(pixels.mean()),
                "spatial_below_half": float((pixels < 0.5).mean()),
                "spatial_std_within_image": float(np.mean([one.std() for one in spatial])),
            })
        rows.append(row)
    return rows


def validation_images(path: Path) -> list[Path]:
    """The validation images of the run at ``path`` (its split.json), sorted by stem."""
    from unet_cbam.data.verify import data_folders, find_pairs
    from unet_cbam.run import RunFolder

    folder = RunFolder(path.parent if path.suffix == ".keras" else path)
    if not folder.split_path.is_file():
        raise SystemExit(f"{path}: no split.json to take validation images from; "
                         "give --images")
    data = folder.config.data
    pairs, _ = find_pairs(*data_folders(data))
    if data.val_data is not None:
        pairs += find_pairs(Path(data.val_data) / "images", Path(data.val_data) / "masks")[0]
    by_stem = {pair.stem: pair.image_path for pair in pairs}
    stems = folder.read_split()["val"]
    missing = [stem for stem in stems if stem not in by_stem]
    if missing:
        raise SystemExit(f"{path}: validation images {missing[:3]} are gone from "
                         f"{data_folders(data)[0]}")
    return [by_stem[stem] for stem in sorted(stems)]


def run_statistics(path: Path, images: list[Path]) -> list[dict]:
    """Gate statistics of one run on ``images``, each prepared as predict.py prepares it."""
    from unet_cbam.config import InferenceConfig
    from unet_cbam.data.io import read_raw
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    predictor = BatchPredictor(load_run(path), InferenceConfig())
    per_level: dict[int, dict[str, list]] = {}
    for image_path in images:
        raw = read_raw(image_path)
        _, maps = predictor.attention(predictor.run.preprocess(raw, image_path))
        for level, gates in maps.items():
            for key, value in gates.items():
                per_level.setdefault(level, {}).setdefault(key, []).append(value)
    return gate_statistics({
        level: {key: (np.stack(values) if key == "channel" else values)
                for key, values in gates.items()}
        for level, gates in per_level.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or .keras files)")
    parser.add_argument("--images", nargs="+", type=Path,
                        help="images to measure on (default: each run's validation images)")
    parser.add_argument("--max-images", type=int, default=40,
                        help="at most this many images a run, the first by name (default 40)")
    parser.add_argument("--output", type=Path, default=RESULTS / SCRIPT / "attention_stats.json")
    arguments = parser.parse_args()

    from unet_cbam.tables import markdown_table

    report, measured_on = {}, {}
    for path in arguments.runs:
        images = (arguments.images or validation_images(path))[:arguments.max_images]
        measured_on[str(path)] = [str(image) for image in images]
        report[str(path)] = run_statistics(path, images)

    keys = ["channels", "channel_mean", "channel_below_half", "channel_std_across_channels",
            "channel_std_across_images", "spatial_mean", "spatial_below_half",
            "spatial_std_within_image"]
    table = [[Path(run).name, row["level"], *(row.get(key) for key in keys)]
             for run, rows in report.items() for row in rows]
    print(markdown_table(table, ["run", "level", *keys], float_format="{:.3f}".format))
    write_json(SCRIPT, arguments.output.resolve(), {"images": measured_on, "runs": report})
    print(f"\nwritten to {arguments.output}")


if __name__ == "__main__":
    main()
