"""Small data sets written by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import keras
import numpy as np


def write_pairs(root: Path, count: int = 3, size: tuple[int, int] = (32, 40),
                mask_values: tuple[int, ...] = (0, 255), channels: int = 3,
                seed: int = 0) -> Path:
    """``root/images/pN.png`` and ``root/masks/pN.png`` with random content."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shape = size + ((channels,) if channels > 1 else ())
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        mask = rng.choice(np.array(mask_values, np.uint8), size)
        cv2.imwrite(str(root / "images" / f"p{index}.png"), image)
        cv2.imwrite(str(root / "masks" / f"p{index}.png"), mask)
    return root


def make_untrained_run(folder: Path, attention: str = "cbam", channels: int = 3,
                       num_classes: int = 1, policy: str | None = None, **data) -> Path:
    """A run folder (config.yaml + model.keras) with an untrained small model, built under
    the dtype ``policy`` (e.g. mixed_bfloat16, as if trained in it) if given."""
    import keras

    from unet_cbam.config import DataConfig, ModelConfig, RunConfig, save_yaml
    from unet_cbam.models import build_unet

    model = ModelConfig(depth=2, base_filters=4, num_classes=num_classes,
                        input_channels=channels, attention=attention)
    folder.mkdir(parents=True)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy or previous)
    try:
        build_unet(model).save(folder / "model.keras")
    finally:
        keras.config.set_dtype_policy(previous)
    encoding = "binary" if num_classes == 1 else "indexed"
    data.setdefault("mask_values", [0, 255] if encoding == "binary" else None)
    save_yaml(RunConfig(model=model, data=DataConfig(mask_encoding=encoding, **data)),
              folder / "config.yaml")
    return folder


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (no image data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def made_once(tmp_path_factory, name: str, make) -> Path:
    """``make(folder)`` once for the whole test session, not once in every pytest-xdist
    process: the first process to ask makes the folder under a file lock in the
    session's shared temporary folder (pytest-xdist's documented recipe), the others
    wait and reuse it. ``make`` works in a temporary folder, moved into place only when
    it returns, so a failure is never reused. ``shared / f"{name}-inputs"`` (created) is
    a stable place for what the made folder refers to by path. Users only read it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not folder.is_dir():
            making = tmp_path_factory.mktemp(f"{name}-making")
            (shared / f"{name}-inputs").mkdir(exist_ok=True)
            make(making, shared / f"{name}-inputs")
            making.rename(folder)
    return folder


def tiny_fold_config(data: Path, folds: int = 2, fold: int | None = None):
    """A RunConfig for a seconds-long cross-validation run on ``write_pairs(...,
    channels=1)`` data: one epoch of one step per fold (``fold``: that fold only)."""
    from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        model=ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1),
        data=DataConfig(data=str(data), augmentation="none"),
        train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, warmup_epochs=0,
                          folds=folds, fold=fold))


#: The start of a script that sees the CPU as two logical devices (two replicas).
TWO_CPUS = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_on_two_cpus(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` (Python, dedented) in a fresh interpreter whose CPU is two logical
    devices, from the project root; its completed process (stdout and stderr as text)."""
    return subprocess.run([sys.executable, "-c", TWO_CPUS + textwrap.dedent(body)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=600)


class Interrupt(keras.callbacks.Callback):
    """Dies in the middle of ``epoch`` (after its second batch), as a killed process would."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise KeyboardInterrupt
