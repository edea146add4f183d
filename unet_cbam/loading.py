"""Loading a trained run for prediction: its model (safe mode) with the config, mask
codec and class names that preprocess for it and write its masks; a cross-validation
folder's folds as one averaged ensemble; and a model rebuilt in another precision."""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from unet_cbam.config import RunConfig, TunedInference
from unet_cbam.data.io import BITDEPTH, MaskCodec, Normalization, preprocess
from unet_cbam.files import one_line
from unet_cbam.layers import ATTENTION_LAYERS  # noqa: F401 (registers the layers load_model meets)
from unet_cbam.precision import POLICIES
from unet_cbam.run import MODEL_FILE, RunFolder

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A model with what is needed to preprocess for it and write its masks."""

    model: keras.Model
    config: RunConfig
    codec: MaskCodec
    class_names: list[str]
    path: Path
    #: Every model whose probabilities are averaged: the folds of a cross-validation run,
    #: or just ``model``. ``model`` is the first (attention maps come from it).
    members: list[keras.Model] = field(default_factory=list)
    #: The resolution each member was trained at (``data.scale``; 1 for older runs).
    scales: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [self.model]
        if not self.scales:
            self.scales = [self.config.data.scale or 1.0] * len(self.members)

    @property
    def channels(self) -> int:
        return self.config.model.input_channels

    @property
    def normalization(self) -> Normalization:
        """The run's frozen intensity normalisation (bit depth for older runs)."""
        return self.config.data.normalization or BITDEPTH

    def preprocess(self, raw: np.ndarray, path: str | Path = "", standardize: bool = True
                   ) -> np.ndarray:
        """What training fed the model, for an image as stored (see ``io.preprocess``)."""
        return preprocess(raw, self.channels, path, self.normalization, standardize)


def load_run(path: str | Path) -> LoadedRun:
    """A run folder, or a ``.keras`` file with the run's config.yaml beside it, or a
    cross-validation folder (``fold_0`` ... from ``train.py --folds``): its folds'
    models, averaged."""
    path = Path(path)
    if path.is_dir() and not (path / MODEL_FILE).exists() and RunFolder(path).folds():
        return _load_folds(RunFolder(path))
    model_path = path / MODEL_FILE if path.is_dir() else path
    run = RunFolder(model_path.parent)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found")
    if not run.exists():
        raise FileNotFoundError(
            f"{run.config_path}: not found; predict.py needs the run's config.yaml beside the "
            "model (it holds the preprocessing and the mask encoding)")
    if not zipfile.is_zipfile(model_path):
        raise ValueError(f"{model_path}: not a readable .keras model file (corrupt, truncated "
                         "or another format)")
    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises TypeError, ValueError, OSError ...
        raise ValueError(f"{model_path}: cannot load the model in safe mode: "
                         f"{one_line(error)}") from None
    return LoadedRun(model, run.config, run.codec, run.class_names, run.path)

def model_policy(model: keras.Model) -> str:
    """The dtype policy ``model`` computes in: its convolutions' (a loaded model's own
    policy is the default one, whatever its layers use)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return model_policy(layer)
        if isinstance(layer, keras.layers.Conv2D):
            return layer.dtype_policy.name
    return model.dtype_policy.name


def in_precision(model: keras.Model, config, precision: str) -> keras.Model:
    """``model`` rebuilt under ``precision``'s dtype policy with the same weights, or
    ``model`` itself when it already computes in it."""
    policy = POLICIES[precision]
    if model_policy(model) == policy:
        return model
    from unet_cbam.models import build_unet

    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
        rebuilt = build_unet(config)
    finally:
        keras.config.set_dtype_policy(previous)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _load_folds(run: RunFolder) -> LoadedRun:
    """The folds of a cross-validation run, checked to share their preprocessing."""
    folds = run.folds()
    expected = folds[0].config.train.folds or len(folds)
    numbers = [int(fold.path.name.rsplit("_", 1)[1]) for fold in folds]
    missing = [index for index in range(expected) if index not in numbers
               or not run.fold(index).model_path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run.path}: fold(s) {', '.join(map(str, missing))} of {expected} have no "
            f"{MODEL_FILE} yet; train them (train.py --output {run.path} --folds {expected} "
            f"--fold K), or predict with one fold's folder")
    loaded = [load_run(fold.path) for fold in folds]
    first = loaded[0]
    for fold, other in zip(folds[1:], loaded[1:], strict=True):
        for what, mine, theirs in (
                ("model", first.config.model, other.config.model),
                ("normalization", first.config.data.normalization,
                 other.config.data.normalization),
                ("mask encoding", first.codec, other.codec)):
            if mine != theirs:
                raise ValueError(f"{fold.path}: its {what} differs from {folds[0].path.name}'s; "
                                 "the folds of one run must share it to be averaged")
    # The ensemble's threshold and post-processing were chosen on the folds' out-of-fold
    # predictions (cv_metrics.json); a single fold's own choice does not carry over.
    tuned = (run.read_cv_metrics() or {}).get("inference")
    tuned = TunedInference.from_config(tuned) if tuned is not None else None
    config = dataclasses.replace(first.config, inference=tuned)
    return LoadedRun(first.model, config, first.codec, first.class_names, run.path,
                     members=[other.model for other in loaded],
                     scales=[other.scales[0] for other in loaded])

