"""How much do a trained model's attention gates vary, and with what?

A channel gate that is the same for every image is a fixed per-channel scale,
which the decoder convolution after the skip can absorb: it adds nothing a
model without attention cannot learn. This script measures, for each skip
level of each run, how the gates vary across channels, across images and
(for the spatial map) across pixels:

    python benchmarks/isbi2012.py --models unet-cbam --seeds 1 --keep-runs runs/isbi
    python benchmarks/attention_stats.py runs/isbi/unet-cbam-seed0

By default on the ISBI training slices 00-23 (never the test slices).
Prints a table and writes benchmarks/results/attention_stats.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ISBI, RESULTS, write_json  # noqa: E402


def gate_statistics(maps: dict) -> list[dict]:
    """Per level: spreads of the channel gates and the spatial map (see the module docstring)."""
    rows = []
    for level, gates in sorted(maps.items()):
        row: dict = {"level": level}
        if "channel" in gates:
            channel = gates["channel"]  # (N, C)
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
            spatial = gates["spatial"]  # (N, h, w)
            row.update({
                "spatial_mean": float(spatial.mean()),
                "spatial_below_half": float((spatial < 0.5).mean()),
                "spatial_std_within_image": float(spatial.std(axis=(1, 2)).mean()),
            })
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or .keras files)")
    parser.add_argument("--images", nargs="+", type=Path,
                        default=[ISBI / "images" / f"slice{i:02d}.png" for i in range(24)],
                        help="images to measure on (default: ISBI training slices 00-23)")
    parser.add_argument("--output", type=Path, default=RESULTS / "attention_stats.json")
    arguments = parser.parse_args()

    import numpy as np

    from unet_cbam.attention import attention_maps
    from unet_cbam.data.io import read_image
    from unet_cbam.predict import load_run
    from unet_cbam.tables import markdown_table

    report = {}
    for path in arguments.runs:
        run = load_run(path)
        images = np.stack([read_image(image, run.channels) for image in arguments.images])
        report[str(path)] = gate_statistics(attention_maps(run.model, images))

    keys = ["channels", "channel_mean", "channel_below_half", "channel_std_across_channels",
            "channel_std_across_images", "spatial_mean", "spatial_below_half",
            "spatial_std_within_image"]
    table = [[Path(run).name, row["level"], *(row.get(key) for key in keys)]
             for run, rows in report.items() for row in rows]
    print(markdown_table(table, ["run", "level", *keys], float_format="{:.3f}".format))
    write_json(arguments.output.resolve(),
               {"images": [str(image) for image in arguments.images], "runs": report})
    print(f"\nwritten to {arguments.output}")


if __name__ == "__main__":
    main()
