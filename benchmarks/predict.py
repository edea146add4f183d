"""How fast is predict.py, and how much memory does a huge image take?

1. A folder of 512x512 images (the 30 ISBI slices): images/s of the batch job
   (read, tile, predict, stitch, threshold, write PNG) next to raw
   `model.predict` on the same images already in memory, interleaved in one
   process after a full warm-up pass of each, best of --rounds. Target: >= 0.85.
2. The cost of --tta on the same folder.
3. One 4096x4096 and one 8192x8192 grayscale image (ISBI slices tiled),
   each predicted in a fresh process: time and peak resident memory.
   Target: 8192x8192 under 3 GB.

The model is the default configuration for 1-channel images (untrained:
speed does not depend on the weights).

    python -m benchmarks.predict [--sizes 4096 8192] [--skip-large]

Prints a Markdown table and writes benchmarks/results/predict/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import ISBI, ROOT, machine, make_run, peak_rss_mb, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem


def folder_speeds(run_dir: Path, images: Path, work: Path, rounds: int
                  ) -> tuple[float, float, float]:
    """(raw model.predict, predict.py, predict.py --tta) images/s; best of ``rounds``."""
    import numpy as np

    from unet_cbam.config import InferenceConfig
    from unet_cbam.data.io import read_image
    from unet_cbam.inputs import list_inputs
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    run = load_run(run_dir)
    files = list_inputs(images)
    batch = np.stack([read_image(path, 1) for path in files])

    def raw() -> float:
        start = time.perf_counter()
        run.model.predict(batch, batch_size=4, verbose=0)
        return len(files) / (time.perf_counter() - start)

    def job(name: str, tta: bool = False) -> float:
        predictor = BatchPredictor(run, InferenceConfig(tta=tta), work / name)
        start = time.perf_counter()
        predictor.run_files(files, progress=False)
        return len(files) / (time.perf_counter() - start)

    raw(), job("warm-up")  # tracing, thread pools, file cache
    raw_rates, job_rates = [], []
    for index in range(rounds):
        raw_rates.append(raw())
        job_rates.append(job(f"round{index}"))
    job("warm-up-tta", tta=True)
    return max(raw_rates), max(job_rates), job("tta", tta=True)


def large_image(size: int, folder: Path) -> Path:
    import numpy as np

    from unet_cbam.data.io import read_raw, write_image

    slices = [read_raw(ISBI / "images" / f"slice{i:02d}.png") for i in range(4)]
    tile = np.block([[slices[0], slices[1]], [slices[2], slices[3]]])
    repeats = -(-size // tile.shape[0])
    image = np.tile(tile, (repeats, repeats))[:size, :size]
    path = folder / f"large{size}.png"
    write_image(path, image)
    return path


def single(run_dir: Path, image: Path, output: Path) -> None:
    """Child process: predict one image, print time and peak memory as JSON."""
    from unet_cbam.config import InferenceConfig
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor

    run = load_run(run_dir)
    start = time.perf_counter()
    result = BatchPredictor(run, InferenceConfig(), output).run_files([image], progress=False)
    seconds = time.perf_counter() - start
    assert result.items[0].status == "ok", result.items[0].error
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of raw and predict.py (best is kept)")
    parser.add_argument("--single", nargs=3, metavar=("RUN", "IMAGE", "OUT"),
                        help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.single:
        single(*(Path(p) for p in arguments.single))
        return

    info = machine()  # before the runs: the commit they ran on
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        run_dir = make_run(work / "run")
        images = ISBI / "images"
        raw, batch, tta = folder_speeds(run_dir, images, work, arguments.rounds)
        rows.append({"case": "30 images 512x512: raw model.predict", "images/s": raw})
        rows.append({"case": "30 images 512x512: predict.py", "images/s": batch,
                     "vs raw": batch / raw})
        rows.append({"case": "30 images 512x512: predict.py --tta", "images/s": tta,
                     "vs raw": tta / raw})
        if not arguments.skip_large:
            for size in arguments.sizes:
                image = large_image(size, work)
                completed = subprocess.run(
                    [sys.executable, "-m", f"benchmarks.{SCRIPT}",
                     "--single", str(run_dir), str(image),
                     str(work / f"large-out-{size}")],
                    cwd=ROOT, capture_output=True, text=True, check=True)
                measured = json.loads(completed.stdout.strip().splitlines()[-1])
                rows.append({"case": f"1 image {size}x{size} gray",
                             "seconds": measured["seconds"],
                             "peak memory MiB": measured["peak_rss_mb"]})
    columns = ["case", "images/s", "vs raw", "seconds", "peak memory MiB"]
    print_table(rows, columns)
    path = write_json(SCRIPT, "predict.json", {"machine": info, "tile_size": 512,
                                       "overlap": 0.25, "rounds": arguments.rounds,
                                       "rows": rows})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
