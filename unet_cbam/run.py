"""The run folder: the one module that knows its file names and formats.

A run folder is what train.py leaves and what predict.py, evaluation, the
notebooks and the benchmarks read. Like nanoGPT's checkpoint it carries its
own configuration, so predicting or resuming rebuilds everything from the
folder, never from flags::

    config.yaml           the RunConfig (mask encoding resolved): model, preprocessing, codec
    split.json            which pairs trained and which validated
    fingerprint.json      what the data looked like (when recorded)
    model.keras           the best model by the monitored validation score
    checkpoint/           last completed epoch: weights, optimizer state, epoch (for resume)
    history.csv           one row per epoch: losses, per-class IoU/Dice, learning rate
    training_curves.png   history.csv as plots, redrawn every epoch
    logs/                 TensorBoard
    metrics.json          final per-class validation scores of model.keras

This module imports neither Keras nor TensorFlow: reading a run's config,
codec and class names is cheap. Every file is written atomically.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_cbam.config import DataConfig, RunConfig, load_yaml, monitor_mode, save_yaml
from unet_cbam.data.io import MaskCodec
from unet_cbam.files import write_text

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
FINGERPRINT_FILE = "fingerprint.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.csv"
CURVES_FILE = "training_curves.png"
LOGS_DIR = "logs"
METRICS_FILE = "metrics.json"


@dataclass
class RunFolder:
    """A run folder on disk; the config is read at most once per instance."""

    path: Path
    _config: RunConfig | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # -- locations -----------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def split_path(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def fingerprint_path(self) -> Path:
        return self.path / FINGERPRINT_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES_FILE

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def exists(self) -> bool:
        """Whether the folder holds a run (its config has been written)."""
        return self.config_path.is_file()

    # -- config, codec, class names ---------------------------------------------

    @property
    def config(self) -> RunConfig:
        """The saved RunConfig (read once)."""
        if self._config is None:
            self._config = load_yaml(RunConfig, self.config_path)
        return self._config

    def write_config(self, config: RunConfig) -> None:
        save_yaml(config, self.config_path)
        self._config = config

    @property
    def codec(self) -> MaskCodec:
        return codec_from_config(self.config)

    @property
    def class_names(self) -> list[str]:
        return class_names(self.config.data, self.codec)

    # -- split, fingerprint, metrics ---------------------------------------------

    def read_split(self) -> dict[str, list[str]]:
        """``{"train": [stems], "val": [stems]}``."""
        return _read_json(self.split_path)

    def write_split(self, train: list[str], val: list[str]) -> None:
        write_text(self.split_path, json.dumps({"train": list(train), "val": list(val)},
                                               indent=1))

    def read_fingerprint(self) -> dict | None:
        """The data fingerprint, or None for runs that did not record one."""
        return _read_json(self.fingerprint_path) if self.fingerprint_path.is_file() else None

    def write_fingerprint(self, fingerprint: dict) -> None:
        write_text(self.fingerprint_path, json.dumps(fingerprint, indent=2))

    def read_metrics(self) -> dict:
        return _read_json(self.metrics_path)

    def write_metrics(self, metrics: dict) -> None:
        write_text(self.metrics_path, json.dumps(metrics, indent=2))

    # -- history ------------------------------------------------------------------

    def read_history(self) -> dict[str, list[float]]:
        return read_history(self.history_path)

    def best_score(self, monitor: str) -> float | None:
        """The best value of ``monitor`` so far (lowest for losses), or None."""
        if not self.history_path.is_file():
            return None
        values = [v for v in self.read_history().get(monitor, []) if not math.isnan(v)]
        if not values:
            return None
        return min(values) if monitor_mode(monitor) == "min" else max(values)


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv (Keras CSVLogger) -> ``{column: values}`` (NaN where not a number)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def codec_from_config(config: RunConfig) -> MaskCodec:
    """The mask codec a run saved (its data section has the encoding resolved)."""
    data = config.data
    if data.mask_encoding == "auto":
        raise ValueError("the run's config has mask_encoding 'auto'; it was never trained")
    return MaskCodec.from_data_config(data, config.model.num_classes)


def class_names(data: DataConfig, codec: MaskCodec) -> list[str]:
    """Configured names, or the codec's defaults (``background/foreground``, ``class0..``)."""
    if data.class_names:
        if len(data.class_names) != codec.num_labels:
            raise ValueError(f"class_names has {len(data.class_names)} names for "
                             f"{codec.num_labels} classes: {data.class_names}")
        return list(data.class_names)
    return codec.default_class_names()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None


def load_model(path: str | Path):
    """Load a run's ``model.keras`` (or any ``.keras`` file of this package) in safe mode.

    Importing ``unet_cbam.layers`` registers the custom layers; this does it
    first, so ``unet_cbam.load_model(path)`` works where a bare
    ``keras.saving.load_model`` would not know them. Losses are not restored
    (``compile=False``): segmentation-models' loss objects do not deserialize.
    """
    import keras

    import unet_cbam.layers  # noqa: F401 (registers the custom layers)

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return keras.saving.load_model(path, safe_mode=True, compile=False)
