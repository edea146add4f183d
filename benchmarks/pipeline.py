"""Does the data pipeline keep the model fed?

Measures, on the ISBI 2012 training slices, at one patch size:
- pipeline throughput: augmented patches/s out of `training_dataset` (default
  augmentation, foreground oversampling), with no model attached;
- training throughput: patches/s of `model.fit` steps of the default model on
  batches already in memory (so no pipeline cost is counted);
and their ratio (the target is >= 3x).

    python -m benchmarks.pipeline [--patch-size 256] [--batch-size 8] [--steps 20]

Prints a Markdown table and writes benchmarks/results/pipeline/pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import ISBI, machine, print_table, write_json

#: Its results folder: benchmarks/results/SCRIPT/.
SCRIPT = Path(__file__).stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ISBI)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed batches of each kind")
    parser.add_argument("--augmentation", default="default")
    arguments = parser.parse_args()

    import keras
    import numpy as np

    from unet_cbam.config import DataConfig, ModelConfig, RunConfig
    from unet_cbam.data.dataset import training_dataset
    from unet_cbam.data.prepare import prepare_data
    from unet_cbam.losses import SegmentationLoss
    from unet_cbam.metrics import segmentation_metrics
    from unet_cbam.models import build_unet

    info = machine()  # before the measurement: the commit it ran on
    model_config = ModelConfig(num_classes=1, input_channels=1)
    config = RunConfig(model=model_config,
                       data=DataConfig(data=str(arguments.data), patch_size=arguments.patch_size))
    data = prepare_data(config, progress=False)
    batch, patch = arguments.batch_size, arguments.patch_size

    dataset = training_dataset(data.train, patch_size=patch, batch_size=batch,
                               augmentation=arguments.augmentation)
    iterator = iter(dataset)
    for _ in range(3):  # warm-up: thread pools, tracing
        next(iterator)
    start = time.perf_counter()
    for _ in range(arguments.steps):
        images, targets = next(iterator)
    pipeline_rate = arguments.steps * batch / (time.perf_counter() - start)

    model = build_unet(model_config)
    model.compile(optimizer="adam", loss=SegmentationLoss("bce+dice"),
                  metrics=segmentation_metrics(data.class_names))
    images, targets = np.asarray(images), np.asarray(targets)
    model.train_on_batch(images, targets)  # warm-up: tracing
    start = time.perf_counter()
    for _ in range(arguments.steps):
        model.train_on_batch(images, targets)
    training_rate = arguments.steps * batch / (time.perf_counter() - start)

    row = {
        "patch": f"{patch}x{patch}",
        "augmentation": arguments.augmentation,
        "pipeline patches/s": pipeline_rate,
        "training patches/s": training_rate,
        "ratio": pipeline_rate / training_rate,
        "model params": model.count_params(),
    }
    print_table([row], list(row))
    path = write_json(SCRIPT, "pipeline.json", {"machine": info, "batch_size": batch,
                                        "steps": arguments.steps, "result": row,
                                        "keras": keras.__version__})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
