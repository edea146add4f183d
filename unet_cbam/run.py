"""The run folder: the one module that knows its file names and formats.

A run folder is what train.py leaves and what predict.py, evaluation, the
notebooks and the benchmarks read. Like nanoGPT's checkpoint it carries its
own configuration, so predicting or resuming rebuilds everything from the
folder, never from flags::

    config.yaml           the RunConfig (mask encoding resolved): model, preprocessing, codec
    split.json            which pairs trained and which validated
    fingerprint.json      what the data looked like (when recorded)
    model.keras           the best model by the monitored validation score
    checkpoint/           the last two completed epochs: epoch-NNNN.weights.h5 (weights and
                          optimizer state after NNNN epochs) and epoch-NNNN.json (its logs)
    history.csv           one row per epoch: losses, per-class IoU/Dice, learning rate
    training_curves.png   history.csv as plots, redrawn after an epoch (at most every
                          30 s) and at the end
    logs/                 TensorBoard
    metrics.json          final per-class validation scores of model.keras

This module imports neither Keras nor TensorFlow: reading a run's config,
codec and class names is cheap. Every file is written atomically (a
temporary, then a rename), so a process killed at any instant leaves each
file complete: the previous version or the new one.

A checkpoint is complete when its weights file exists: its logs are written
first and the weights renamed into place last. The number of completed epochs
is the newest complete checkpoint's; history.csv is written after it, so on
resume history has at most one row too few (rebuilt from the checkpoint's
logs) and never a row too many (rows of epochs the checkpoint does not hold
are dropped): every epoch appears exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_cbam.config import (
    RUN_DEFAULTS_BEFORE,
    DataConfig,
    RunConfig,
    load_yaml,
    monitor_mode,
    save_yaml,
)
from unet_cbam.data.io import MaskCodec
from unet_cbam.files import atomic_write, write_text

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
FINGERPRINT_FILE = "fingerprint.json"
FOLD_PREFIX = "fold_"
CV_METRICS_FILE = "cv_metrics.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.csv"
CURVES_FILE = "training_curves.png"
LOGS_DIR = "logs"
METRICS_FILE = "metrics.json"
#: Complete checkpoints kept: the newest, and one to fall back to.
CHECKPOINTS_KEPT = 2
_CHECKPOINT = re.compile(r"^epoch-(\d+)\.weights\.h5$")
# BackupAndRestore's files, which runs written before this format still have.
_LEGACY_WEIGHTS = "latest.weights.h5"
_LEGACY_METADATA = "training_metadata.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """The training state after ``epochs`` completed epochs."""

    epochs: int
    weights_path: Path
    logs: dict | None = None  # the last epoch's logged values, when recorded


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

    # -- cross-validation folds ------------------------------------------------

    def fold(self, index: int) -> RunFolder:
        """The run folder of fold ``index`` (``fold_<index>``): an ordinary run."""
        return RunFolder(self.path / f"{FOLD_PREFIX}{index}")

    def folds(self) -> list[RunFolder]:
        """The fold runs inside this folder, by fold number (empty for a single run)."""
        if not self.path.is_dir():
            return []
        found = []
        for child in self.path.iterdir():
            suffix = child.name[len(FOLD_PREFIX):]
            if child.is_dir() and child.name.startswith(FOLD_PREFIX) and suffix.isdigit():
                found.append((int(suffix), RunFolder(child)))
        return [run for _, run in sorted(found, key=lambda item: item[0])]

    @property
    def cv_metrics_path(self) -> Path:
        return self.path / CV_METRICS_FILE

    def clear(self) -> None:
        """Remove this tool's files of the run (nothing else in the folder)."""
        import shutil

        for path in (self.config_path, self.split_path, self.fingerprint_path,
                     self.model_path, self.history_path, self.curves_path, self.metrics_path):
            path.unlink(missing_ok=True)
        for folder in (self.checkpoint_dir, self.logs_dir):
            shutil.rmtree(folder, ignore_errors=True)
        self._config = None

    # -- config, codec, class names ---------------------------------------------

    @property
    def config(self) -> RunConfig:
        """The saved RunConfig (read once); a field added since the run was written has the
        value the run was built with (``RUN_DEFAULTS_BEFORE``)."""
        if self._config is None:
            self._config = load_yaml(RunConfig, self.config_path, missing=RUN_DEFAULTS_BEFORE)
        return self._config

    def write_config(self, config: RunConfig) -> None:
        """Save ``config`` as the run's config.yaml (atomically)."""
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
        """Save which stems train and which validate (split.json)."""
        write_text(self.split_path, json.dumps({"train": list(train), "val": list(val)},
                                               indent=1))

    def read_fingerprint(self) -> dict | None:
        """The data fingerprint, or None for runs that did not record one."""
        return _read_json(self.fingerprint_path) if self.fingerprint_path.is_file() else None

    def write_fingerprint(self, fingerprint: dict) -> None:
        """Save the data fingerprint (fingerprint.json)."""
        write_text(self.fingerprint_path, json.dumps(fingerprint, indent=2))

    def read_metrics(self) -> dict:
        """The best model's validation scores (metrics.json)."""
        return _read_json(self.metrics_path)

    def write_metrics(self, metrics: dict) -> None:
        """Save the best model's validation scores (metrics.json)."""
        write_text(self.metrics_path, json.dumps(metrics, indent=2))

    def read_cv_metrics(self) -> dict | None:
        """A cross-validation folder's summary (``unet_cbam.folds``), or None before every
        fold has finished."""
        return _read_json(self.cv_metrics_path) if self.cv_metrics_path.is_file() else None

    def write_cv_metrics(self, summary: dict) -> None:
        """Save a cross-validation folder's summary (cv_metrics.json)."""
        write_text(self.cv_metrics_path, json.dumps(summary, indent=2))

    def load_model(self):
        """The run's best model, loaded in safe mode (``load_model``)."""
        return load_model(self.model_path)

    # -- checkpoints ----------------------------------------------------------------

    def checkpoint_path(self, epochs: int) -> Path:
        """The weights file of the checkpoint after ``epochs`` epochs."""
        return self.checkpoint_dir / f"epoch-{epochs:04d}.weights.h5"

    def checkpoints(self) -> list[Checkpoint]:
        """Complete checkpoints, newest first (a legacy BackupAndRestore one last)."""
        found = []
        if self.checkpoint_dir.is_dir():
            for path in self.checkpoint_dir.iterdir():
                match = _CHECKPOINT.match(path.name)
                if match is None:
                    continue
                logs_path = path.with_name(path.name.replace(".weights.h5", ".json"))
                try:
                    logs = json.loads(logs_path.read_text())
                except (OSError, ValueError):
                    logs = None
                found.append(Checkpoint(int(match.group(1)), path, logs))
        found.sort(key=lambda checkpoint: -checkpoint.epochs)
        legacy = self.checkpoint_dir / _LEGACY_WEIGHTS
        if legacy.is_file():
            try:
                epochs = int(json.loads(
                    (self.checkpoint_dir / _LEGACY_METADATA).read_text())["epoch"])
                found.append(Checkpoint(epochs, legacy))
            except (OSError, ValueError, KeyError):
                logger.warning("%s: no readable %s beside it; not used", legacy,
                               _LEGACY_METADATA)
        return found

    def write_checkpoint(self, epochs: int, save_weights, logs: dict) -> Checkpoint:
        """Save the state after ``epochs`` epochs; ``save_weights(path)`` writes the weights.

        The logs go first, the weights last (each atomically): a checkpoint
        whose weights file exists is complete. Older checkpoints beyond
        ``CHECKPOINTS_KEPT`` are removed afterwards.
        """
        path = self.checkpoint_path(epochs)
        write_text(path.with_name(path.name.replace(".weights.h5", ".json")),
                   json.dumps(_plain_logs(logs), indent=1))
        with atomic_write(path) as temporary:
            save_weights(temporary)
        for old in self.checkpoints()[CHECKPOINTS_KEPT:]:
            old.weights_path.unlink(missing_ok=True)
            if _CHECKPOINT.match(old.weights_path.name):
                old.weights_path.with_name(
                    old.weights_path.name.replace(".weights.h5", ".json")).unlink(missing_ok=True)
        return Checkpoint(epochs, path, logs)

    # -- history ------------------------------------------------------------------

    def read_history(self) -> dict[str, list[float]]:
        """history.csv as ``{column: [value per epoch]}``."""
        return read_history(self.history_path)

    def history_rows(self) -> list[dict[str, str]]:
        """history.csv as written: one dict of column -> text per epoch."""
        if not self.history_path.is_file():
            return []
        with open(self.history_path, newline="") as handle:
            return list(csv.DictReader(handle))

    def write_history(self, rows: list[dict]) -> None:
        """Write every row (``epoch`` first, then the columns in first-seen order)."""
        columns: list[str] = ["epoch"]
        for row in rows:
            columns += [key for key in row if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.history_path, buffer.getvalue())

    def append_history(self, epoch: int, logs: dict) -> None:
        """Add (or replace) the row of 0-based ``epoch``."""
        rows = [row for row in self.history_rows() if int(row["epoch"]) != epoch]
        self.write_history(rows + [{"epoch": epoch, **_plain_logs(logs)}])

    def align_history(self, checkpoint: Checkpoint) -> None:
        """History for a resume from ``checkpoint``: epochs 0 .. epochs-1, each once.

        Rows of later epochs (trained, then lost with the process) are
        dropped; a missing row of the checkpoint's own epoch is rebuilt
        from the logs stored with it.
        """
        last = checkpoint.epochs - 1
        rows = [row for row in self.history_rows() if int(row["epoch"]) <= last]
        if checkpoint.logs is not None and all(int(row["epoch"]) != last for row in rows):
            logger.warning("%s: epoch %d was checkpointed but not logged; its row is rebuilt "
                           "from the checkpoint", self.history_path, last + 1)
            rows.append({"epoch": last, **_plain_logs(checkpoint.logs)})
        self.write_history(rows)

    def best_score(self, monitor: str) -> float | None:
        """The best value of ``monitor`` so far (lowest for losses), or None."""
        if not self.history_path.is_file():
            return None
        values = [v for v in self.read_history().get(monitor, []) if not math.isnan(v)]
        if not values:
            return None
        return min(values) if monitor_mode(monitor) == "min" else max(values)


def _plain_logs(logs: dict) -> dict[str, float]:
    return {key: float(value) for key, value in sorted(logs.items())}


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv -> ``{column: values}`` (NaN where not a number)."""
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
    classes = config.model.num_classes
    if classes == "auto":  # binary masks say it; other encodings are decided by training
        if data.mask_encoding != "binary":
            raise ValueError("the run's config has num_classes 'auto'; it was never trained")
        classes = 1
    return MaskCodec.from_data_config(data, classes)


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
