"""Training: verify the data, build the model under a tf.distribute strategy,
fit with checkpoints, and leave a run folder (see ``unet_cbam.run``) that
predict.py, the notebooks and the benchmarks use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from unet_cbam import distribute
from unet_cbam import postprocess as postprocessing
from unet_cbam.config import (
    DataConfig,
    InferenceConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    monitor_mode,
    parse_duration,
)
from unet_cbam.data.augment import augmentation_pipeline
from unet_cbam.data.dataset import (
    PairSource,
    kfold_split,
    split_samples,
    training_dataset,
    validation_dataset,
)
from unet_cbam.data.io import MaskCodec, Normalization
from unet_cbam.data.verify import (
    DataError,
    DatasetReport,
    data_folders,
    detect_codec,
    find_pairs,
    resolve_binary_threshold,
    verify_pairs,
)
from unet_cbam.files import atomic_write, remove_stale_temporaries, write_text
from unet_cbam.fingerprint import fingerprint_from_report
from unet_cbam.inference import keras_predictor, resampled_predict
from unet_cbam.losses import SegmentationLoss, resolve_loss_name
from unet_cbam.metrics import segmentation_metrics
from unet_cbam.models import build_unet
from unet_cbam.plan import plan_rows, plan_run, plan_scale, plan_time_budget, replan_epochs
from unet_cbam.precision import choose_precision, set_policy
from unet_cbam.run import CV_METRICS_FILE, FOLD_PREFIX, RunFolder, class_names, read_history
from unet_cbam.visualize import plot_history

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

@dataclass
class PreparedData:
    """Verified data, ready for the pipelines."""

    config: RunConfig           # with the mask encoding and the plan resolved
    codec: MaskCodec
    train: PairSource
    val: PairSource
    report: DatasetReport       # of every verified pair, training and validation
    fingerprint: dict

    @property
    def class_names(self) -> list[str]:
        return class_names(self.config.data, self.codec)


def prepare_data(config: RunConfig, split: dict | None = None, progress: bool = True
                 ) -> PreparedData:
    """Pair, verify, fingerprint, plan and split; raise ``DataError`` listing every problem.

    ``split`` (from a run's split.json) pins which stems train and validate.
    The returned config has every automatic setting decided (``plan_run``),
    from the fingerprint of all pairs (training and validation: never a test
    set, which train.py does not see).
    """
    data, model = config.data, config.model
    images_dir, masks_dir = data_folders(data)
    samples, problems = find_pairs(images_dir, masks_dir)
    val_samples: list = []
    if data.val_data is not None:
        val_samples, val_problems = find_pairs(Path(data.val_data) / "images",
                                               Path(data.val_data) / "masks")
        problems += val_problems
    if not samples + val_samples:
        raise DataError(problems)
    data, threshold_reason = resolve_binary_threshold(samples + val_samples, data,
                                                      model.num_classes)
    codec = detect_codec(samples + val_samples, data, model.num_classes)
    report = verify_pairs(samples + val_samples, codec, model.input_channels,
                          cache_bytes=data.cache_gb * 1e9, progress=progress,
                          max_pixels=data.max_pixels, explain_values=threshold_reason is None)
    report.problems = problems + report.problems  # every problem at once, pairing first
    report.raise_for_problems()

    if split is not None:
        by_stem = {s.stem: s for s in samples + val_samples}
        missing = [stem for stem in split["train"] + split["val"] if stem not in by_stem]
        if missing:
            raise DataError([f"{images_dir}: pair {stem!r} of the saved split is gone"
                             for stem in missing])
        train = [by_stem[stem] for stem in split["train"]]
        val = [by_stem[stem] for stem in split["val"]]
    elif config.train.folds is not None:
        if val_samples:
            raise DataError([f"{data.val_data}: val_data cannot be combined with folds (each "
                             "fold validates on its own part of the data)"])
        try:
            train, val = kfold_split(samples, config.train.folds, config.train.fold or 0,
                                     config.train.seed)
        except ValueError as error:
            raise DataError([f"{images_dir}: {error}"]) from None
    elif val_samples:
        train, val = samples, val_samples
    else:
        train, val = split_samples(samples, data.val_fraction, config.train.seed)
    if not val:
        raise DataError([f"{images_dir}: no validation pairs; training needs them to pick the "
                         "best model (set val_fraction > 0 with at least 2 pairs, or val_data)"])

    resolved = dataclasses.replace(
        data, mask_encoding=codec.encoding,
        mask_values=list(report.binary_values()) if codec.encoding == "binary" else None,
        palette=[list(c) for c in codec.palette] if codec.palette else None)
    codec = dataclasses.replace(codec, values=tuple(resolved.mask_values or codec.values))
    report.codec = codec
    fingerprint = fingerprint_from_report(report, class_names(resolved, codec), threshold_reason)
    config = plan_run(dataclasses.replace(config, data=resolved), fingerprint)
    normalization = Normalization.from_config(config.data.normalization)
    channels = model.input_channels
    sources = [PairSource.from_report(part, report, channels, normalization,
                                      config.data.scale or 1.0) for part in (train, val)]
    report.cache = None  # the sources hold the preprocessed pixels now
    return PreparedData(config, codec, *sources, report, fingerprint)


# --------------------------------------------------------------------------
# optimisation
# --------------------------------------------------------------------------

def default_steps_per_epoch(source: PairSource, patch_size: int, batch_size: int) -> int:
    """About one pass over the training pixels per epoch."""
    pixels = sum(h * w for h, w in source.sizes)
    return max(1, math.ceil(pixels / (patch_size * patch_size * batch_size)))


def make_optimizer(train: TrainConfig, steps_per_epoch: int,
                   schedule: keras.optimizers.schedules.LearningRateSchedule | None = None
                   ) -> keras.optimizers.Optimizer:
    """The optimizer with its learning-rate schedule (which resumes with the optimizer);
    ``schedule`` replaces the one ``train`` asks for (``movable_schedule``)."""
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = train.learning_rate
    if schedule is not None:
        learning_rate = schedule
    elif train.lr_schedule == "cosine":
        warmup, total = _cosine_steps(train, steps_per_epoch)
        if warmup:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                train.learning_rate / 100, total, alpha=0.01, warmup_target=train.learning_rate,
                warmup_steps=warmup)
        else:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                train.learning_rate, total, alpha=0.01)
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=train.weight_decay)
    return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)


def movable_schedule(train: TrainConfig, steps_per_epoch: int) -> MovableCosineDecay | None:
    """``train``'s cosine schedule with a horizon the time budget's pacer can move (the
    same values as ``make_optimizer``'s); None for the other schedules."""
    if train.lr_schedule != "cosine":
        return None
    warmup, total = _cosine_steps(train, steps_per_epoch)
    return MovableCosineDecay(train.learning_rate, total, warmup_steps=warmup)


def _cosine_steps(train: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(warm-up steps, decay steps) of the cosine schedule."""
    warmup = train.warmup_epochs * steps_per_epoch
    return warmup, max(1, train.epochs * steps_per_epoch - warmup)


@keras.saving.register_keras_serializable("unet_cbam")
class MovableCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Keras's ``CosineDecay`` (alpha 0.01, optional linear warm-up from 1/100 of the
    rate), with its decay horizon in a variable that may change while training.

    Keras's schedule takes the horizon as a Python number, fixed when the
    training function is traced; the time budget's pacer (``TimeBudget``)
    moves it when the real pace of training differs from the planned one.
    """

    def __init__(self, learning_rate: float, decay_steps: float, warmup_steps: int = 0,
                 alpha: float = 0.01, name: str = "movable_cosine_decay"):
        self.learning_rate, self.warmup_steps, self.alpha, self.name = (
            float(learning_rate), int(warmup_steps), float(alpha), name)
        self.decay_steps = keras.Variable(float(decay_steps), trainable=False,
                                          dtype="float32", name="decay_steps")

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        progress = ops.clip((step - self.warmup_steps) / ops.maximum(self.decay_steps, 1.0),
                            0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = self.learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)
        if not self.warmup_steps:
            return decayed
        start = self.learning_rate / 100
        warming = start + (self.learning_rate - start) * step / self.warmup_steps
        return ops.where(step < self.warmup_steps, warming, decayed)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate,
                "decay_steps": float(keras.ops.convert_to_numpy(self.decay_steps)),
                "warmup_steps": self.warmup_steps, "alpha": self.alpha, "name": self.name}


def make_strategy(train: TrainConfig) -> tf.distribute.Strategy:
    """``train.strategy`` (see ``unet_cbam.distribute``)."""
    return distribute.make_strategy(train.strategy, parse_duration(train.cluster_timeout))


# --------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------

class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save ``model.keras`` when the monitored value improves, atomically.

    Keras' ModelCheckpoint writes in place; a run killed while saving would
    leave a truncated best model. This writes a temporary file and renames it.
    Losses improve downwards, scores upwards (``monitor_mode``).

    Args:
        path: the model file.
        monitor: a logged value, e.g. ``val_mean_dice`` or ``val_loss``.
        best: the best value of earlier epochs (resume), or None.
    """

    def __init__(self, path: Path, monitor: str, best: float | None = None):
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.lower_is_better = monitor_mode(monitor) == "min"
        self.best = best if best is not None else (np.inf if self.lower_is_better else -np.inf)

    def improved(self, value: float) -> bool:
        return value < self.best if self.lower_is_better else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"monitor {self.monitor!r} is not among the logged values "
                           f"{sorted(logs or {})}")
        if self.improved(float(value)):
            logger.info("epoch %d: %s improved from %.4f to %.4f, saving %s",
                        epoch + 1, self.monitor, self.best, value, self.path)
            self.best = float(value)
            with atomic_write(self.path) as temporary:
                self.model.save(temporary)


class AverageReplicaStatistics(keras.callbacks.Callback):
    """``fit`` with several replicas (mirrored): batch normalisation's replica-local moving
    statistics set to their mean after every epoch's training steps
    (``distribute.statistics_averager``): fit validates next, then saves. (The multi-worker
    loop does the same itself.)"""

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy, self.average = strategy, None

    def on_test_begin(self, logs=None):
        if self.average is None:
            self.average = distribute.statistics_averager(self.model, self.strategy)
        self.average()


class RunRecorder(keras.callbacks.Callback):
    """After each epoch: the checkpoint, then the history row (see ``unet_cbam.run``).

    Replaces Keras' BackupAndRestore (which rewrites its weights file in
    place: a kill inside that window left a run that could never resume)
    and CSVLogger (whose row came after the checkpoint and the best model, so
    a kill in between lost the row for good).
    """

    def __init__(self, run: RunFolder):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self.run.write_checkpoint(epoch + 1, self.model.save_weights, logs)
        self.run.append_history(epoch, logs)


class PlotHistory(keras.callbacks.Callback):
    """Redraw training_curves.png from history.csv after every epoch."""

    def __init__(self, history_path: Path, figure_path: Path, title: str):
        super().__init__()
        self.history_path, self.figure_path, self.title = history_path, figure_path, title

    def on_epoch_end(self, epoch, logs=None):
        if self.history_path.exists():
            figure = plot_history(read_history(self.history_path), self.title)
            with atomic_write(self.figure_path) as temporary:
                figure.savefig(temporary, dpi=110, format="png")


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------

@dataclass
class TrainResult:
    run_dir: Path
    history: dict[str, list[float]]
    metrics: dict
    chief: bool = True  # False: a multi-worker run's other worker (the chief wrote run_dir)


def check_run_dir(run: RunFolder, resume: bool) -> bool:
    """Whether to resume; refuse to touch a folder that holds something else.

    A run that never completed an epoch (a failed start: a bad option, bad
    data, a crash in the first epoch) has nothing to resume or to lose: a
    rerun, with or without ``--resume``, replaces it with the new settings.
    """
    has_run = run.exists()
    if has_run and not run.checkpoints():
        logger.warning("%s: the run there never completed an epoch; starting it again",
                       run.path)
        run.clear()
        has_run = False
    if has_run and not resume:
        raise FileExistsError(
            f"{run.path}: already holds a run; pass --resume to continue it, or choose "
            "another --output")
    if not has_run and run.path.exists() and any(run.path.iterdir()):
        raise FileExistsError(f"{run.path}: exists and is not empty; choose another --output")
    return has_run


def resume_config(saved: RunConfig, requested: RunConfig) -> RunConfig:
    """Continue ``saved`` with ``requested``'s training section; model and data must match.

    A time-budgeted run resumed with the same budget keeps its planned (or
    re-planned) epochs and steps per epoch."""
    changed = [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
               if getattr(saved.model, f.name) != getattr(requested.model, f.name)]
    changed += [f"data.{f.name}" for f in dataclasses.fields(DataConfig)
                if getattr(requested.data, f.name) != getattr(saved.data, f.name)
                and f.name not in ("mask_encoding", "mask_values", "palette", "cache_gb",
                                   "max_pixels")
                and getattr(requested.data, f.name) != PLANNED.get(f.name, f)]
    if changed:
        raise ValueError("a resumed run keeps its model and data; these differ from the saved "
                         f"config: {', '.join(changed)}")
    train = requested.train
    if train.batch_size is None:  # planned: the saved run's
        train = dataclasses.replace(train, batch_size=saved.train.batch_size)
    if train.time_budget is not None and saved.train.time_budget is not None:
        if parse_duration(train.time_budget) != parse_duration(saved.train.time_budget):
            raise ValueError(
                f"a resumed run keeps its time budget's plan: time_budget {train.time_budget!r} "
                f"differs from the saved {saved.train.time_budget!r}; resume with the saved "
                "budget, or without --time-budget and with --epochs")
        train = dataclasses.replace(train, epochs=saved.train.epochs,
                                    steps_per_epoch=saved.train.steps_per_epoch)
    return dataclasses.replace(saved, train=train)


#: Data settings whose automatic value (planned from the data) a resumed run keeps as saved.
PLANNED = {"binary_threshold": "auto", "normalization": None, "patch_size": None,
           "foreground_oversampling": None, "scale": None}


def requested_precision(train: TrainConfig) -> str:
    """``precision``, with the former ``mixed_precision: true`` meaning float16."""
    if train.mixed_precision and train.precision == "auto":
        return "float16"
    return train.precision


def check_patch_size(config: RunConfig) -> None:
    divisor = config.model.divisor
    if config.data.patch_size is not None and config.data.patch_size % divisor:
        raise ValueError(
            f"patch_size {config.data.patch_size} is not divisible by {divisor} (2**depth with "
            f"depth {config.model.resolved_depth}); use a multiple of {divisor}, e.g. "
            f"{max(divisor, config.data.patch_size // divisor * divisor)}")


def check_batch_size(batch_size: int, replicas: int) -> None:
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} (the global batch) is not divisible by the "
                         f"{replicas} replicas in sync; use a multiple of {replicas}")


def check_monitor(monitor: str, names: list[str]) -> None:
    """``monitor`` must be a value that validation logs for these classes."""
    known = ["val_loss"] + [f"val_{metric.name}" for metric in segmentation_metrics(names)]
    if monitor not in known:
        raise ValueError(f"monitor {monitor!r} is not logged; choose one of {', '.join(known)}")


def train(config: RunConfig, run_dir: str | Path | RunFolder, resume: bool = False,
          progress: bool = True,
          callbacks: list[keras.callbacks.Callback] | None = None,
          build_model: Callable[[ModelConfig], keras.Model] = build_unet,
          step_timings: dict | None = None) -> TrainResult:
    """Train ``config`` into ``run_dir``; with ``resume``, continue the run there.

    ``config`` is the full run configuration; on resume its model and data
    sections must equal the saved ones (only ``train`` may change, for example
    more epochs). ``callbacks`` are extra Keras callbacks, run after ours.
    ``build_model`` builds the network from ``config.model`` (default
    ``build_unet``); another builder trains another architecture through the
    same data, loss, schedule and checkpoints (the benchmark's peers). It must
    take images in [0, 1] and return sigmoid/softmax probabilities, and its
    input sizes must be multiples of ``config.model.divisor``.

    ``step_timings`` (with ``--time-budget``): step times measured earlier in
    this process for the same model and data, ``(patch size, batch size) ->
    (seconds a step, seconds of the first step, who measured)``; a measurement
    found there is reused instead of measured again, and a new one is added
    (the folds of one cross-validation share it: ``train_folds``).

    The global Keras dtype policy (set for mixed precision) is restored when
    this returns or raises.
    """
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    check_patch_size(config)
    augmentation_pipeline(config.data.augmentation, config.data.augmentations)  # fail early
    strategy = make_strategy(config.train)  # multiworker: before TensorFlow runs anything
    chief = distribute.is_chief(strategy)
    if chief:
        resuming = check_run_dir(run, resume)
    else:  # the chief checks and writes the run; this worker reads it to resume
        resuming = resume and run.exists() and bool(run.checkpoints())
    split = None
    if resuming:
        if chief:
            remove_stale_temporaries(run.path, depth=None)  # a killed run's half-written files
        config = resume_config(run.config, config)
        split = run.read_split()
    policy = keras.config.dtype_policy()
    scratch = None if chief else worker_scratch(run)
    try:
        return _train(config, scratch or run, resuming, split, progress,
                      list(callbacks or []), build_model, strategy, shared=run,
                      step_timings=step_timings)
    finally:
        keras.config.set_dtype_policy(policy)
        if scratch is not None:
            shutil.rmtree(scratch.path, ignore_errors=True)


def worker_scratch(run: RunFolder) -> RunFolder:
    """An empty temporary folder for a multi-worker run's other worker.

    It writes there what the chief writes to the run folder (its callbacks run alike), and
    removes it at the end, as the tf.distribute guidance has it. The name is fixed per run
    and task, so a rerun after a kill removes the killed worker's folder first.
    """
    cluster = distribute.describe_cluster()
    digest = hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / (f"unet-cbam-{cluster.task_type}{cluster.task_index}"
                                          f"-{digest}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return RunFolder(path)


def _train(config: RunConfig, run: RunFolder, resuming: bool, split: dict | None,
           progress: bool, extra_callbacks: list[keras.callbacks.Callback],
           build_model: Callable[[ModelConfig], keras.Model], strategy: tf.distribute.Strategy,
           shared: RunFolder, step_timings: dict | None = None) -> TrainResult:
    """Train into ``run``: the run folder, or on a multi-worker run's other workers a
    scratch folder (they resume from ``shared``, the chief's run folder)."""
    keras.utils.set_random_seed(config.train.seed)
    precision, why = choose_precision(requested_precision(config.train))
    set_policy(precision)

    data = prepare_data(config, split=split, progress=progress)
    check_monitor(config.train.monitor, data.class_names)
    config = data.config
    if config.train.precision != precision:  # decided here: saved, so a resume keeps it
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, precision=precision,
                                              mixed_precision=False),
            plan={**(config.plan or {}), "precision": {"value": precision, "reason": why}})
    check_patch_size(config)
    for name, value, reason in plan_rows(config.plan):
        logger.info("plan: %s = %s (%s)", name, value, reason)

    train_cfg = config.train
    steps = train_cfg.steps_per_epoch or default_steps_per_epoch(
        data.train, config.data.patch_size, train_cfg.batch_size)
    replicas = strategy.num_replicas_in_sync
    check_batch_size(train_cfg.batch_size, replicas)
    multiworker = distribute.is_multiworker(strategy)

    def training_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
        """This worker's patches (its own random stream), in per-replica batches."""
        return training_dataset(
            data.train, patch_size=config.data.patch_size,
            batch_size=context.get_per_replica_batch_size(train_cfg.batch_size),
            augmentation=config.data.augmentation, augmentations=config.data.augmentations,
            foreground_oversampling=config.data.foreground_oversampling,
            seed=train_cfg.seed + context.input_pipeline_id)

    def validation_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(train_cfg.batch_size)
        return validation_dataset(
            data.val, patch_size=config.data.patch_size, batch_size=per_replica,
            shard=(context.input_pipeline_id, context.num_input_pipelines),
            multiple=replicas * per_replica if multiworker else 1)

    single = tf.distribute.InputContext()  # fit splits the global batches itself
    train_ds, val_ds = training_data(single), validation_data(single)

    def compiled(optimizer: Callable[[], keras.optimizers.Optimizer]) -> keras.Model:
        with strategy.scope():  # the model and its optimizer's variables: the strategy's
            model = build_model(config.model)
            model.compile(
                optimizer=optimizer(),
                loss=SegmentationLoss(resolve_loss_name(train_cfg.loss,
                                                        config.model.num_classes),
                                      train_cfg.class_weights),
                metrics=segmentation_metrics(data.class_names))
        return model

    budget_started = time.perf_counter()
    if train_cfg.time_budget is not None and not resuming:  # a resumed run keeps its plan
        throwaway, measured_by = None, set()

        def measure() -> tuple[float, float]:
            """One training step's seconds after warm-up, and the first step's (the
            chief's, on every worker: all plan the same epochs and steps); taken from
            ``step_timings`` when an earlier run of this process measured this plan."""
            nonlocal throwaway
            key = (config.data.patch_size, train_cfg.batch_size)
            if step_timings is not None and key in step_timings:
                step_seconds, first, who = step_timings[key]
                measured_by.add(who)
                logger.info("time budget: %.3g s a step at patch %d, batch %d, as measured "
                            "in %s", step_seconds, *key, who)
                return step_seconds, first
            if throwaway is None:
                throwaway = compiled(keras.optimizers.Adam)
            if multiworker:
                step = distribute.DistributedLoop(throwaway, strategy, training_data).train_step
            else:
                batches = iter(training_data(single))

                def step():
                    throwaway.train_on_batch(*next(batches))
            step_seconds, first = measure_step_seconds(step)
            timing = (distribute.chief_value(strategy, step_seconds),
                      distribute.chief_value(strategy, first))
            if step_timings is not None:
                step_timings[key] = (*timing, run.path.name)
            return timing

        step_seconds, first = measure()
        if config.data.scale is None:  # the resolution: from the passes the budget affords
            pixel_rate = train_cfg.batch_size * config.data.patch_size ** 2 / step_seconds
            spent = distribute.chief_value(strategy, time.perf_counter() - budget_started)
            left = max(0.0, parse_duration(train_cfg.time_budget) - spent)
            passes = left * pixel_rate / sum(h * w for h, w in data.train.native_sizes)
            config = plan_scale(config, data.fingerprint, passes)
            for name in ("scale", "patch_size", "batch_size"):
                if name in config.plan:
                    logger.info("plan: %s = %s (%s)", name, config.plan[name]["value"],
                                config.plan[name]["reason"])
            if config.data.scale < 1:
                data = dataclasses.replace(data, config=config,
                                           train=data.train.rescaled(config.data.scale),
                                           val=data.val.rescaled(config.data.scale))
                train_cfg = config.train
                check_patch_size(config)
                check_batch_size(train_cfg.batch_size, replicas)
                step_seconds, first = measure()
                train_ds, val_ds = training_data(single), validation_data(single)
            steps = train_cfg.steps_per_epoch or default_steps_per_epoch(
                data.train, config.data.patch_size, train_cfg.batch_size)
        config = plan_time_budget(config, step_seconds, steps, distribute.chief_value(
            strategy, time.perf_counter() - budget_started), max(0.0, first - step_seconds),
            measured_in=", ".join(sorted(measured_by)) or None)
        del throwaway
        train_cfg, steps = config.train, config.train.steps_per_epoch
        for name in ("epochs", "steps_per_epoch"):
            logger.info("plan: %s = %s (%s)", name, config.plan[name]["value"],
                        config.plan[name]["reason"])
    logger.info("training on %d pairs, validating on %d; %d epochs of %d steps of %d patches",
                len(data.train), len(data.val), train_cfg.epochs, steps, train_cfg.batch_size)
    budgeted = train_cfg.time_budget is not None
    with strategy.scope():  # its horizon: a variable, moved by the pacer (TimeBudget)
        schedule = movable_schedule(train_cfg, steps) if budgeted else None
    model = compiled(lambda: make_optimizer(train_cfg, steps, schedule))
    # Written only now that everything that can be checked has been: a failed start
    # leaves no run folder (or one the next attempt replaces, see check_run_dir).
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(config)
    run.write_fingerprint(data.fingerprint)
    run.write_split([s.stem for s in data.train.samples], [s.stem for s in data.val.samples])

    mode = train_cfg.monitor_mode
    initial_epoch, best = 0, None
    if resuming:
        with strategy.scope():
            initial_epoch = restore_checkpoint(model, shared, align_history=run is shared)
        best = shared.best_score(train_cfg.monitor)
        values = shared.read_history().get(train_cfg.monitor, [])
        if run is shared and values and best == values[-1]:
            # The last epoch was the best, and a kill may have come before its model.keras.
            with atomic_write(run.model_path) as temporary:
                model.save(temporary)
    chief_epoch = distribute.chief_value(strategy, initial_epoch)
    if chief_epoch != initial_epoch:
        raise ValueError(
            f"{shared.path}: this worker resumes after epoch {initial_epoch}, the chief after "
            f"epoch {chief_epoch:g}; every worker needs the same --output, on a file system "
            "they share, and the same --resume")
    callbacks = [
        LearningRateLogger(),
        RunRecorder(run),
        BestModelCheckpoint(run.model_path, train_cfg.monitor, best),
        PlotHistory(run.history_path, run.curves_path, model.name),
        keras.callbacks.TensorBoard(str(run.logs_dir)),
    ]
    if strategy.num_replicas_in_sync > 1 and not multiworker:
        callbacks.insert(0, AverageReplicaStatistics(strategy))
    if train_cfg.lr_schedule == "plateau":
        callbacks.insert(0, keras.callbacks.ReduceLROnPlateau(
            train_cfg.monitor, mode=mode, factor=0.5, patience=max(2, train_cfg.epochs // 20)))
    fit_epochs = train_cfg.epochs
    if budgeted:  # resumed: the share of the epochs still to run
        left = (train_cfg.epochs - initial_epoch) / train_cfg.epochs
        fit_epochs += max(2, train_cfg.epochs - initial_epoch)  # the pacer may extend

        def replanned(epochs: int, pace: float, done: int) -> None:
            nonlocal config
            config = replan_epochs(config, epochs, pace, done)
            run.write_config(config)

        callbacks.append(TimeBudget(
            left * parse_duration(train_cfg.time_budget) - (time.perf_counter() - budget_started),
            steps, train_cfg.epochs, fit_epochs, schedule,
            agree=lambda value: distribute.chief_value(strategy, value), replanned=replanned))
        logger.info("time budget: %d epochs planned, re-planned after each epoch from the pace "
                    "of training (at most %d)", train_cfg.epochs, fit_epochs)
    if train_cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            train_cfg.monitor, mode=mode, patience=train_cfg.early_stopping_patience))
    callbacks += extra_callbacks

    if multiworker:
        loop = distribute.DistributedLoop(model, strategy, training_data, validation_data)
        loop.fit(epochs=fit_epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                 callbacks=callbacks, verbose=1 if progress else 2)
    else:
        model.fit(train_ds, epochs=fit_epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, validation_data=val_ds, callbacks=callbacks,
                  shuffle=False, verbose=1 if progress else 2)
    if run is not shared:  # another worker: the chief evaluates and tunes
        return TrainResult(shared.path, run.read_history(), {}, chief=False)

    best = keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
    metrics = final_metrics(best, run, val_ds, data.class_names, train_cfg.monitor)
    run.write_metrics(metrics)
    tuned = postprocessing.tune(validation_predictions(best, data.val, config.model.divisor),
                                data.class_names, data.fingerprint, train_cfg.tune_on)
    log_inference(tuned)
    run.write_config(dataclasses.replace(config, inference=tuned))
    return TrainResult(run.path, run.read_history(), metrics)


def validation_predictions(model: keras.Model, source: PairSource, divisor: int,
                           limit: int = postprocessing.MAX_IMAGES
                           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(probabilities, labels) of up to ``limit`` validation images (evenly spread), whole
    and at their own size, with predict.py's default tiling (and its resampling, when
    the model was trained on resampled images): what the post-processing is chosen on."""
    inference = InferenceConfig()
    predictor = keras_predictor(model)
    count = len(source)
    indices = range(count) if count <= limit else \
        np.linspace(0, count - 1, limit).round().astype(int).tolist()
    pairs = []
    for index in indices:
        image, labels = source.native(index)
        probabilities = resampled_predict(
            source.normalization.standardize(image), predictor, scale=source.scale,
            tile_size=inference.tile_size, overlap=inference.overlap,
            batch_size=inference.batch_size, divisor=divisor)
        pairs.append((probabilities, labels))
    return pairs


def log_inference(tuned: dict) -> None:
    judged = f" of {tuned['tuned_on']}" if tuned.get("tuned_on") else ""
    if "threshold" in tuned:
        logger.info("validation: threshold %.2f (Dice%s %s)", tuned["threshold"], judged,
                    ", ".join(f"{k}: {v:.4f}" for k, v in tuned["threshold_dice"].items()))
    for name, steps in tuned["classes"].items():
        chosen = [f"min_size {steps['min_size']}" if steps["min_size"] else ""]
        chosen += [key for key in ("largest_only", "fill_holes") if steps[key]]
        before, after = steps["validation_dice"]
        logger.info("validation: post-processing of %s: %s (Dice%s %.4f -> %.4f)", name,
                    ", ".join(c for c in chosen if c) or "none helps", judged, before, after)


def measure_step_seconds(step: Callable[[], object], warmup: int = 2, timed: int = 5,
                         clock: Callable[[], float] = time.perf_counter
                         ) -> tuple[float, float]:
    """Seconds of one training ``step`` (of a throwaway model: its weights change): the
    median of ``timed`` steps after ``warmup`` steps; and the seconds of the first step,
    which traces the training function (as the real model's first step will again)."""
    seconds = []
    for _ in range(warmup + timed):
        start = clock()
        step()
        seconds.append(clock() - start)
    return max(float(np.median(seconds[warmup:])), 1e-6), seconds[0]


class TimeBudget(keras.callbacks.Callback):
    """Fits training into ``seconds``: the pacer of ``--time-budget``.

    The plan turns the budget into epochs from a few steps of a throwaway
    model, which on a busy 2-core machine reads 20-30 % off either way (too
    slow leaves budget unused, too fast overruns it). After each epoch this
    re-plans the epochs still to run from the pace of the run's own training
    steps (all but the first, which traces the training function), so the run
    ends within about half an epoch of the budget, and it moves the horizon of
    a ``MovableCosineDecay`` with them, so the learning rate still anneals
    over the whole run. Within an epoch it stops an overrun of ``OVERRUN`` x
    ``seconds`` (a machine that slows down). Validation time is not counted:
    the budget is for training.

    Args:
        seconds: the training budget still to spend.
        steps_per_epoch, epochs: the plan (total epochs of the run, counting
            those before ``initial_epoch`` of a resumed run).
        max_epochs: the most epochs it may extend to (``fit``'s ``epochs``).
        schedule: the schedule whose horizon follows the epochs, if any.
        agree: ``value -> the chief's value`` (every worker plans the same epochs).
        replanned: called with ``(epochs, seconds_a_step, after_epochs)`` on a change.
    """

    OVERRUN = 1.15

    def __init__(self, seconds: float, steps_per_epoch: int = 1, epochs: int = 1,
                 max_epochs: int | None = None, schedule: MovableCosineDecay | None = None,
                 agree: Callable[[float], float] = lambda value: value,
                 replanned: Callable[[int, float, int], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.seconds, self.steps_per_epoch, self.epochs = seconds, steps_per_epoch, epochs
        self.max_epochs = max_epochs if max_epochs is not None else epochs
        self.schedule, self.agree, self.replanned, self.clock = schedule, agree, replanned, clock
        self.spent, self.steps, self.started, self.first = 0.0, 0, None, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.started = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        seconds = self.clock() - self.started
        self.spent += seconds
        self.steps += 1
        if self.steps == 1:
            self.first = seconds  # it traces the training function: not the pace
        if self.spent > self.OVERRUN * self.seconds and not self.model.stop_training:
            logger.warning("time budget: training took %.0f s of %.0f s planned; stopping",
                           self.spent, self.seconds)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        pace = (self.spent - self.first) / (self.steps - 1) if self.steps > 1 else self.spent
        more = round(max(0.0, self.seconds - self.spent) / (pace * self.steps_per_epoch))
        epochs = int(self.agree(float(min(self.max_epochs, done + more))))
        if epochs != self.epochs:
            logger.info("time budget: %.3g s a step so far, %.0f s of %.0f s spent after "
                        "epoch %d: %d epochs instead of %d", pace, self.spent, self.seconds,
                        done, epochs, self.epochs)
            self.epochs = epochs
            if self.schedule is not None:
                self.schedule.decay_steps.assign(float(max(
                    1, epochs * self.steps_per_epoch - self.schedule.warmup_steps)))
            if self.replanned is not None:
                self.replanned(epochs, pace, done)
        if done >= self.epochs:
            self.model.stop_training = True


def train_folds(config: RunConfig, run_dir: str | Path | RunFolder, resume: bool = False,
                progress: bool = True, **kwargs) -> list[TrainResult]:
    """k-fold cross-validation: fold k trains into ``run_dir/fold_k`` (an ordinary run).

    All folds one after the other, or only ``config.train.fold``. With a
    time budget and all folds, each fold gets its share. ``cv_metrics.json``
    is written once every fold has its metrics (also when the last of
    several machines, each training one fold, finishes). ``kwargs`` go to
    ``train``.
    """
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    train_cfg = config.train
    if train_cfg.folds is None:
        raise ValueError("train_folds needs train.folds (the fold count)")
    if run.exists():
        raise FileExistsError(f"{run.path}: holds a single run; choose another --output for "
                              "cross-validation")
    if run.path.is_dir():
        others = sorted(p.name for p in run.path.iterdir()
                        if not p.name.startswith(FOLD_PREFIX) and p.name != CV_METRICS_FILE)
        if others:
            raise FileExistsError(f"{run.path}: holds other files ({', '.join(others[:3])}); "
                                  "choose another --output for cross-validation")
    indices = [train_cfg.fold] if train_cfg.fold is not None else list(range(train_cfg.folds))
    if train_cfg.time_budget is not None and train_cfg.fold is None:
        share = parse_duration(train_cfg.time_budget) / train_cfg.folds
        train_cfg = dataclasses.replace(train_cfg, time_budget=f"{share:g}s")
    results, timings = [], {}  # the step time: measured by the first fold, for all
    for index in indices:
        logger.info("fold %d of %d -> %s", index, train_cfg.folds, run.fold(index).path)
        fold_config = dataclasses.replace(config, train=dataclasses.replace(train_cfg,
                                                                            fold=index))
        results.append(train(fold_config, run.fold(index), resume=resume, progress=progress,
                             step_timings=timings, **kwargs))
    if not all(result.chief for result in results):  # another worker of a multi-worker run
        return results
    summary = write_cv_metrics(run, train_cfg.folds)
    if summary is not None:
        summary["inference"] = tune_folds(run, train_cfg.folds)
        write_text(run.cv_metrics_path, json.dumps(summary, indent=2))
    return results


def out_of_fold_predictions(run: RunFolder, folds: int
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's best model on its own validation images (``validation_predictions``,
    an equal share of ``MAX_IMAGES`` each): what the ensemble's choice is made on."""
    pairs, per_fold = [], max(1, postprocessing.MAX_IMAGES // folds)
    for index in range(folds):
        fold = run.fold(index)
        data = prepare_data(fold.config, split=fold.read_split(), progress=False)
        model = keras.saving.load_model(fold.model_path, safe_mode=True, compile=False)
        pairs += validation_predictions(model, data.val, fold.config.model.divisor, per_fold)
    return pairs


def tune_folds(run: RunFolder, folds: int) -> dict:
    """Threshold and post-processing for the fold ensemble, chosen on the out-of-fold
    predictions."""
    pairs = out_of_fold_predictions(run, folds)
    names = class_names(run.fold(0).config.data, run.fold(0).codec)
    tuned = postprocessing.tune(pairs, names, run.fold(0).read_fingerprint(),
                                run.fold(0).config.train.tune_on)
    log_inference(tuned)
    return tuned


def write_cv_metrics(run: RunFolder, folds: int) -> dict | None:
    """``cv_metrics.json``: each fold's validation scores, and their mean and standard
    deviation; None (nothing written) while a fold has no metrics yet."""
    metrics = []
    for index in range(folds):
        fold = run.fold(index)
        if not fold.metrics_path.is_file():
            logger.info("cv_metrics.json waits for %s", fold.path)
            return None
        metrics.append(fold.read_metrics())
    summary: dict = {"folds": folds, "per_fold": metrics, "classes": {}}
    for name in metrics[0]["classes"]:
        summary["classes"][name] = {
            f"{score}_{stat}": float(function([m["classes"][name][score] for m in metrics]))
            for score in ("dice", "iou") for stat, function in (("mean", np.mean),
                                                                ("std", np.std))}
    for score in ("mean_dice", "mean_iou"):
        values = [m[score] for m in metrics]
        summary[score] = float(np.mean(values))
        summary[f"{score}_std"] = float(np.std(values))
    write_text(run.cv_metrics_path, json.dumps(summary, indent=2))
    return summary


def restore_checkpoint(model: keras.Model, run: RunFolder, align_history: bool = True) -> int:
    """Load the newest readable checkpoint into ``model``; return its completed epochs.

    A damaged newest checkpoint is skipped with a warning for the previous
    one; with none readable, the error says so and how to start again.
    History is aligned with the checkpoint used (``RunFolder.align_history``;
    not by a multi-worker run's other workers, which only read the run).
    (A run without any checkpoint is never resumed: ``check_run_dir``.)
    """
    checkpoints = run.checkpoints()
    model.optimizer.build(model.trainable_variables)  # its variables are in the checkpoint
    for index, checkpoint in enumerate(checkpoints):
        try:
            model.load_weights(checkpoint.weights_path)
        except Exception as error:  # h5py raises OSError, Keras ValueError
            fallback = checkpoints[index + 1].weights_path.name \
                if index + 1 < len(checkpoints) else None
            logger.warning("%s: damaged checkpoint (%s)%s", checkpoint.weights_path,
                           " ".join(str(error).split())[:200],
                           f"; falling back to {fallback}" if fallback else "")
            continue
        logger.info("resuming after epoch %d from %s", checkpoint.epochs,
                    checkpoint.weights_path)
        if align_history:
            run.align_history(checkpoint)
        return checkpoint.epochs
    raise ValueError(
        f"{run.checkpoint_dir}: no readable checkpoint to resume from; start the run again in "
        f"a new --output folder (or remove {run.path} and train again)")


def final_metrics(best: keras.Model, run: RunFolder, val_ds: tf.data.Dataset,
                  names: list[str], monitor: str) -> dict:
    """Per-class validation scores of ``best``, the run's saved best model."""
    metrics = segmentation_metrics(names)
    for images, targets in val_ds:
        predictions = best(images, training=False)
        for metric in metrics:
            metric.update_state(targets, predictions)
    scores = {m.name: float(m.result()) for m in metrics}
    history = run.read_history()
    best_epoch = None
    if history.get(monitor):
        pick = np.nanargmin if monitor_mode(monitor) == "min" else np.nanargmax
        best_epoch = int(history["epoch"][int(pick(history[monitor]))]) + 1
    return {
        "best_epoch": best_epoch,
        "monitor": monitor,
        "classes": {name: {"iou": scores[f"iou_{name}"], "dice": scores[f"dice_{name}"]}
                    for name in names},
        "mean_iou": scores["mean_iou"],
        "mean_dice": scores["mean_dice"],
    }
