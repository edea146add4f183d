"""Training: one run from a config: the data prepared (``unet_cbam.data.prepare``), the
model built and compiled under a tf.distribute strategy, the time budget planned, ``fit``
with the run's callbacks (``unet_cbam.callbacks``), then the best model scored and its
threshold and post-processing chosen on validation (``unet_cbam.validation``). It leaves a
run folder (``unet_cbam.run``) that predict.py, the notebooks and the benchmarks use.
Cross-validation is ``unet_cbam.folds``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from unet_cbam import distribute, semisupervised
from unet_cbam import postprocess as postprocessing
from unet_cbam.callbacks import (
    AverageReplicaStatistics,
    BestModelCheckpoint,
    LearningRateLogger,
    PlotHistory,
    ResumableEarlyStopping,
    RunRecorder,
    TimeBudget,
    measure_step_seconds,
)
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig, format_duration
from unet_cbam.data.augment import augmentation_pipeline
from unet_cbam.data.dataset import training_dataset, validation_batches, validation_dataset
from unet_cbam.data.prepare import PreparedData, prepare_data
from unet_cbam.files import atomic_write, remove_stale_temporaries
from unet_cbam.losses import SegmentationLoss, resolve_loss_name
from unet_cbam.metrics import segmentation_metrics
from unet_cbam.models import build_unet
from unet_cbam.optim import default_steps_per_epoch, make_optimizer, movable_schedule
from unet_cbam.plan import plan_rows, plan_scale, plan_time_budget, replan_epochs
from unet_cbam.precision import choose_precision, set_policy
from unet_cbam.progress import keras_verbosity
from unet_cbam.run import RunFolder
from unet_cbam.validation import final_metrics, log_inference, validation_predictions

logger = logging.getLogger(__name__)

#: The time budget's measurement reads this many validation batches (twice: tracing, then
#: timed), not the whole pass.
VALIDATION_BATCHES_MEASURED = 4
#: Tuning predicts whole validation images with overlapping tiles (25 %) and scores many
#: candidates: this many times the pixels' forward time at the validation pass's rate
#: (with the final scores' one pass and SAVE_SECONDS: 30 s estimated, 30 s taken by a
#: 3-minute CTC run on the 2-core AVX2 EPYC, 2026-12-06).
TUNING_OVERHEAD = 2.0
#: Loading the best model and writing the config and metrics at the end.
SAVE_SECONDS = 3.0


def make_strategy(train: TrainConfig) -> tf.distribute.Strategy:
    """``train.strategy`` (see ``unet_cbam.distribute``)."""
    return distribute.make_strategy(train.strategy, train.cluster_timeout)


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What ``train`` leaves: the run folder, its history and the best model's scores."""
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
               if getattr(saved.model, f.name) != getattr(requested.model, f.name)
               and not (f.name == "num_classes" and requested.model.num_classes == "auto")]
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
        if train.time_budget != saved.train.time_budget:
            raise ValueError(
                "a resumed run keeps its time budget's plan: time_budget "
                f"{format_duration(train.time_budget)} differs from the saved "
                f"{format_duration(saved.train.time_budget)}; resume with the saved "
                "budget, or without --time-budget and with --epochs")
        train = dataclasses.replace(train, epochs=saved.train.epochs,
                                    steps_per_epoch=saved.train.steps_per_epoch)
    return dataclasses.replace(saved, train=train)


#: Data settings whose automatic value (planned from the data) a resumed run keeps as saved.
PLANNED = {"binary_threshold": "auto", "normalization": None, "patch_size": None,
           "foreground_oversampling": None, "class_sampling": None, "scale": None,
           "class_colors": None, "ignore_value": None, "ignore_edges": False}


def requested_precision(train: TrainConfig) -> str:
    """``precision``, with the former ``mixed_precision: true`` meaning float16."""
    if train.mixed_precision and train.precision == "auto":
        return "float16"
    return train.precision


def check_patch_size(config: RunConfig) -> None:
    """Refuse a patch size the model's divisor does not divide, naming a good one."""
    divisor = config.model.divisor
    if config.data.patch_size is not None and config.data.patch_size % divisor:
        raise ValueError(
            f"patch_size {config.data.patch_size} is not divisible by {divisor} (2**depth with "
            f"depth {config.model.resolved_depth}); use a multiple of {divisor}, e.g. "
            f"{max(divisor, config.data.patch_size // divisor * divisor)}")


def check_batch_size(batch_size: int, replicas: int) -> None:
    """Refuse a global batch that the replicas cannot share evenly."""
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
          step_timings: dict | None = None, started: float | None = None) -> TrainResult:
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

    ``started``: ``time.perf_counter()`` when the command began (default: now); a time
    budget counts from it, and ``metrics.json`` records the seconds since.

    The global Keras dtype policy (set for mixed precision) is restored when
    this returns or raises.
    """
    started = time.perf_counter() if started is None else started
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
                      step_timings=step_timings, started=started)
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
           shared: RunFolder, step_timings: dict | None = None,
           started: float | None = None) -> TrainResult:
    """Train into ``run``: the run folder, or on a multi-worker run's other workers a
    scratch folder (they resume from ``shared``, the chief's run folder). ``started``:
    when the command began (the time budget counts from it)."""
    started = time.perf_counter() if started is None else started
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
    session = _Session(dataclasses.replace(data, config=config), strategy, build_model)
    if config.train.time_budget is not None and not resuming:  # a resumed run keeps its plan
        session.plan_time_budget(started, step_timings, run.path.name)
    config, data, train_cfg, steps = session.config, session.data, session.config.train, \
        session.steps
    logger.info("training on %d pairs, validating on %d; %d epochs of %d steps of %d patches",
                len(data.train), len(data.val), train_cfg.epochs, steps, train_cfg.batch_size)
    if data.unlabeled is not None:
        logger.info("learning from %d unlabelled images as well: %d of their patches a step",
                    len(data.unlabeled), train_cfg.batch_size * train_cfg.unlabeled_ratio)
    budgeted = train_cfg.time_budget is not None
    with strategy.scope():  # its horizon: a variable, moved by the pacer (TimeBudget)
        schedule = movable_schedule(train_cfg, steps) if budgeted else None
    model = session.compiled(lambda: make_optimizer(train_cfg, steps, schedule))
    # Written only now that everything that can be checked has been: a failed start
    # leaves no run folder (or one the next attempt replaces, see check_run_dir).
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(config)
    run.write_fingerprint(data.fingerprint)
    run.write_split([s.stem for s in data.train.samples], [s.stem for s in data.val.samples])

    initial_epoch = _resume(model, run, shared, strategy, train_cfg.monitor) if resuming else 0
    callbacks = session.callbacks(run, model.name, initial_epoch,
                                  shared.best_score(train_cfg.monitor) if resuming else None,
                                  shared.read_history().get(train_cfg.monitor) if resuming
                                  else None)
    fit_epochs = train_cfg.epochs
    if budgeted:  # resumed: the share of the epochs still to run
        left = (train_cfg.epochs - initial_epoch) / train_cfg.epochs
        fit_epochs += max(2, train_cfg.epochs - initial_epoch)  # the pacer may extend

        def replanned(epochs: int, pace: float, done: int, last_steps: int | None) -> None:
            nonlocal config
            config = replan_epochs(config, epochs, pace, done, last_steps)
            run.write_config(config)

        plan = config.plan or {}
        final = float(plan.get("final_seconds", {}).get("value", 0.0))
        callbacks.append(TimeBudget(
            left * train_cfg.time_budget - (time.perf_counter() - started) - final,
            steps, train_cfg.epochs, fit_epochs, schedule,
            agree=lambda value: distribute.chief_value(strategy, value), replanned=replanned,
            validation_seconds=plan.get("validation_seconds", {}).get("value"),
            last_steps=plan.get("last_epoch_steps", {}).get("value") if resuming else None))
        logger.info("time budget: %d epochs planned, re-planned after each epoch from the pace "
                    "of training (at most %d)", train_cfg.epochs, fit_epochs)
    callbacks += extra_callbacks

    train_ds, epoch_val_ds, val_ds = session.datasets()
    fitting = time.perf_counter()
    if session.multiworker:
        loop = distribute.DistributedLoop(
            model, strategy, session.training_data,
            lambda context: session.validation_data(context, train_cfg.validation_steps))
        loop.fit(epochs=fit_epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                 callbacks=callbacks, verbose=keras_verbosity(progress))
    else:
        model.fit(train_ds, epochs=fit_epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, validation_data=epoch_val_ds, callbacks=callbacks,
                  shuffle=False, verbose=keras_verbosity(progress))
    release = release_pipelines()
    if run is not shared:  # another worker: the chief evaluates and tunes
        return TrainResult(shared.path, run.read_history(), {}, chief=False)

    finishing = time.perf_counter()
    marks = {}  # the end of the run, step by step: a slow one is named in metrics.json

    def mark(step: str) -> None:
        spent = round(time.perf_counter() - finishing - sum(marks.values()), 1)
        marks[step] = spent or 0.0  # not -0.0

    best = run.load_model()
    mark("load")
    metrics = final_metrics(best, run, val_ds, data.class_names, train_cfg.monitor)
    run.write_metrics(metrics)
    mark("scores")
    predictions = validation_predictions(best, data.val, config.model.divisor)
    mark("tuning_predictions")
    tuned = postprocessing.tune(predictions, data.class_names, data.fingerprint,
                                train_cfg.tune_on)
    mark("tuning")
    log_inference(tuned)
    run.write_config(dataclasses.replace(config, inference=tuned))
    done = time.perf_counter()
    mark("saves")
    metrics["wall_seconds"] = {  # where the command's time went (the benchmarks read it)
        "total": round(done - started, 1),
        "before_training": round(fitting - started, 1),
        "training_and_validation": round(finishing - fitting, 1),
        "final_scores_tuning_and_saves": round(done - finishing, 1),
        "final_steps": marks,
        # off the budget's path: None while it is still running (see release_pipelines)
        "pipeline_release": release.seconds,
        "budget": train_cfg.time_budget,
        "final_planned": (config.plan or {}).get("final_seconds", {}).get("value")}
    run.write_metrics(metrics)
    return TrainResult(run.path, run.read_history(), metrics)


class PipelineRelease(threading.Thread):
    """A garbage collection in a thread of its own; ``seconds``: how long it took, None
    until it is done."""

    def __init__(self):
        super().__init__(name="release-training-pipeline", daemon=True)
        self.seconds: float | None = None

    def run(self) -> None:
        """Collect, and keep how long it took."""
        begun = time.perf_counter()
        gc.collect()
        self.seconds = round(time.perf_counter() - begun, 1)
        logger.debug("training pipeline released in %.1f s", self.seconds)


def release_pipelines() -> PipelineRelease:
    """Tear down the tf.data iterators ``fit`` left behind, off the calling thread.

    When fit stops mid-epoch, as the time budget's pacer makes it, Keras leaves its
    training iterator in a reference cycle (its epoch iterator and the generator that walks
    it). The pipeline is then torn down by whichever garbage collection comes next, on the
    thread that triggers it, waiting on tf.data's threads with the interpreter lock
    released. 3 of 10 five-minute Kvasir-SEG runs at ``--scale 0.2`` stalled for about
    52 s after fit, on a random line of the final steps with the lock free: the mark of
    such a teardown (docs/benchmarks/multi-class.md). Collected here, in a thread of its
    own, the teardown holds up no step of the run.
    """
    release = PipelineRelease()
    release.start()
    return release


class _Session:
    """What one run trains with: its prepared data and config, the strategy, the pipelines
    built from them, and the model compiled under the strategy. The time budget's plan
    (``plan_time_budget``) may resample the data and re-plan the config."""

    def __init__(self, data: PreparedData, strategy: tf.distribute.Strategy,
                 build_model: Callable[[ModelConfig], keras.Model]):
        self.data, self.strategy, self.build_model = data, strategy, build_model
        self.replicas = strategy.num_replicas_in_sync
        self.multiworker = distribute.is_multiworker(strategy)
        check_batch_size(self.config.train.batch_size, self.replicas)

    @property
    def config(self) -> RunConfig:
        return self.data.config

    @property
    def steps(self) -> int:
        """Training steps an epoch: as configured, else about one pass over the pixels."""
        train = self.config.train
        return train.steps_per_epoch or default_steps_per_epoch(
            self.data.train, self.config.data.patch_size, train.batch_size)

    @property
    def class_weights(self) -> list[float] | None:
        """The plan's ``class_sampling`` as a weight per label (None: alike)."""
        chosen = self.config.data.class_sampling
        if chosen is None:
            return None
        return [float(chosen.get(name, 0.0)) for name in self.data.class_names]

    def training_data(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        """This worker's patches (its own random stream), in per-replica batches; with
        unlabelled images, each batch with its unlabelled patches (``semisupervised``)."""
        config, train = self.config, self.config.train
        batch_size = context.get_per_replica_batch_size(train.batch_size)
        labelled = training_dataset(
            self.data.train, patch_size=config.data.patch_size, batch_size=batch_size,
            augmentation=config.data.augmentation, augmentations=config.data.augmentations,
            foreground_oversampling=config.data.foreground_oversampling,
            class_weights=self.class_weights,
            seed=train.seed + context.input_pipeline_id)
        if self.data.unlabeled is None:
            return labelled
        return semisupervised.mixed_dataset(labelled, semisupervised.unlabeled_dataset(
            self.data.unlabeled, patch_size=config.data.patch_size,
            batch_size=batch_size * train.unlabeled_ratio,
            seed=train.seed + 7919 + context.input_pipeline_id))  # not the labelled stream

    def validation_data(self, context: tf.distribute.InputContext,
                        batches: int | None = None) -> tf.data.Dataset:
        """This worker's validation batches: all of them, or the first ``batches``."""
        per_replica = context.get_per_replica_batch_size(self.config.train.batch_size)
        return validation_dataset(
            self.data.val, patch_size=self.config.data.patch_size, batch_size=per_replica,
            shard=(context.input_pipeline_id, context.num_input_pipelines),
            multiple=self.replicas * per_replica if self.multiworker else 1, batches=batches)

    def datasets(self) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset]:
        """(training, the validation after each epoch (the plan's ``validation_steps``
        batches), the whole validation pass) for ``fit``, which splits the global batches
        itself."""
        single = tf.distribute.InputContext()
        whole = self.validation_data(single)
        steps = self.config.train.validation_steps
        return (self.training_data(single),
                whole if steps is None else self.validation_data(single, steps), whole)

    def compiled(self, optimizer: Callable[[], keras.optimizers.Optimizer]) -> keras.Model:
        """A new model with ``optimizer()``, its loss and metrics, under the strategy."""
        config = self.config
        with self.strategy.scope():  # the model and its optimizer's variables
            model = self.build_model(config.model)
            if self.data.unlabeled is not None:
                train = config.train
                model = semisupervised.ConsistencyTraining(
                    model, weight=train.unlabeled_weight, confidence=train.confidence,
                    rampup_steps=round(train.unlabeled_rampup * train.epochs * self.steps))
            model.compile(
                optimizer=optimizer(),
                loss=SegmentationLoss(resolve_loss_name(config.train.loss,
                                                        config.model.num_classes),
                                      config.train.class_weights),
                metrics=segmentation_metrics(self.data.class_names))
            # Built here, not inside the first training step: Keras defers it there without
            # an explicit strategy, and a tf.function that creates variables is traced twice
            # (5.6 s of a tiny test run's 34 s on the 2-core AVX2 EPYC).
            model.optimizer.build(model.trainable_variables)
        return model

    def measure_step(self, step_timings: dict | None, run_name: str
                     ) -> tuple[float, float, float, str | None]:
        """(seconds a training step after warm-up, seconds of the first step, seconds a
        validation batch, who measured them earlier or None): the chief's, on every worker
        (all plan the same epochs and steps); from ``step_timings`` when an earlier run of
        this process measured this patch and batch size, else measured on a throwaway
        model and added there."""
        key = (self.config.data.patch_size, self.config.train.batch_size)
        if step_timings is not None and key in step_timings:
            step_seconds, first, batch_seconds, who = step_timings[key]
            logger.info("time budget: %.3g s a step at patch %d, batch %d, as measured in %s",
                        step_seconds, *key, who)
            return step_seconds, first, batch_seconds, who
        throwaway = self.compiled(keras.optimizers.Adam)
        if self.multiworker:
            step = distribute.DistributedLoop(throwaway, self.strategy,
                                              self.training_data).train_step
            batch_seconds = None  # estimated below: a forward pass is about a third of a step
        else:
            single = tf.distribute.InputContext()
            batches = iter(self.training_data(single))

            def step():
                throwaway.train_on_batch(*next(batches))
            count = min(VALIDATION_BATCHES_MEASURED, self.validation_batches)
            validation = self.validation_data(single, count)
            throwaway.evaluate(validation, verbose=0)  # traces the test function
            begun = time.perf_counter()
            throwaway.evaluate(validation, verbose=0)
            batch_seconds = (time.perf_counter() - begun) / count
        step_seconds, first = measure_step_seconds(step)
        if batch_seconds is None:
            batch_seconds = step_seconds / 3
        timing = tuple(distribute.chief_value(self.strategy, value)
                       for value in (step_seconds, first, batch_seconds))
        if step_timings is not None:
            step_timings[key] = (*timing, run_name)
        return (*timing, None)

    @property
    def validation_batches(self) -> int:
        """Batches of a validation pass (this worker's share)."""
        return validation_batches(self.data.val, self.config.data.patch_size,
                                  self.config.train.batch_size)

    def final_seconds(self, batch_seconds: float) -> float:
        """What the run will take after training, estimated from a validation batch's
        seconds: the best model's scores on every validation batch (one graph function a
        batch, as fast as validation), the tuning's whole-image predictions
        (``TUNING_OVERHEAD`` x the pixels of the validation images it reads, at the
        validation pass's rate; at the training resolution, where the model predicts
        them) and the saves."""
        patch, batch = self.config.data.patch_size, self.config.train.batch_size
        rate = batch * patch * patch / max(batch_seconds, 1e-6)  # pixels a second
        sizes = self.data.val.sizes  # as resampled (a scale-0.25 Kvasir-SEG run counted at
        # full resolution kept 151 s for an end that took 26)
        tuned = sizes if len(sizes) <= postprocessing.MAX_IMAGES else [
            sizes[i] for i in np.linspace(0, len(sizes) - 1, postprocessing.MAX_IMAGES)
            .round().astype(int)]
        tuning = TUNING_OVERHEAD * sum(h * w for h, w in tuned) / rate
        return self.validation_batches * batch_seconds + tuning + SAVE_SECONDS

    def plan_time_budget(self, started: float, step_timings: dict | None, run_name: str
                         ) -> None:
        """The resolution (unless given), then the epochs and steps that fill the budget
        left after ``started`` (``unet_cbam.plan``), from the measured step time."""
        measured_by = set()
        step_seconds, first, batch_seconds, who = self.measure_step(step_timings, run_name)
        measured_by.add(who)
        config = self.config
        if config.data.scale is None:  # the resolution: from the passes the budget affords
            # Every patch a step trains on counts, unlabelled ones too: a semi-supervised
            # run trains at the resolution a supervised one would, and spends the extra
            # time of its steps in fewer of them (not in coarser pixels).
            patches = config.train.batch_size * (
                1 + (config.train.unlabeled_ratio if self.data.unlabeled is not None else 0))
            pixel_rate = patches * config.data.patch_size ** 2 / step_seconds
            left = max(0.0, config.train.time_budget - self._spent(started))
            passes = left * pixel_rate / sum(h * w for h, w in self.data.train.native_sizes)
            config = plan_scale(config, self.data.fingerprint, passes)
            for name in ("scale", "patch_size", "batch_size"):
                if name in config.plan:
                    logger.info("plan: %s = %s (%s)", name, config.plan[name]["value"],
                                config.plan[name]["reason"])
            if config.data.scale < 1:
                unlabeled = self.data.unlabeled
                self.data = dataclasses.replace(
                    self.data, config=config, train=self.data.train.rescaled(config.data.scale),
                    val=self.data.val.rescaled(config.data.scale),
                    unlabeled=unlabeled and unlabeled.rescaled(config.data.scale))
                check_patch_size(config)
                check_batch_size(config.train.batch_size, self.replicas)
                step_seconds, first, batch_seconds, who = self.measure_step(step_timings,
                                                                            run_name)
                measured_by.add(who)
            else:
                self.data = dataclasses.replace(self.data, config=config)
        batches = self.validation_batches
        config = plan_time_budget(self.config, step_seconds, self.steps, self._spent(started),
                                  max(0.0, first - step_seconds),
                                  measured_in=", ".join(sorted(measured_by - {None})) or None,
                                  validation_seconds=batch_seconds * batches,
                                  validation_batches=batches,
                                  final_seconds=self.final_seconds(batch_seconds))
        self.data = dataclasses.replace(self.data, config=config)
        for name in ("epochs", "steps_per_epoch", "validation_steps", "final_seconds"):
            if name in config.plan:
                logger.info("plan: %s = %s (%s)", name, config.plan[name]["value"],
                            config.plan[name]["reason"])

    def _spent(self, started: float) -> float:
        return distribute.chief_value(self.strategy, time.perf_counter() - started)

    def callbacks(self, run: RunFolder, model_name: str, initial_epoch: int,
                  best: float | None, history: list[float] | None
                  ) -> list[keras.callbacks.Callback]:
        """Ours, in order: the learning rate logged, the checkpoint and history, the best
        model, the curves, TensorBoard; replica statistics, the plateau schedule and
        early stopping where they apply. (The time budget's pacer is added by ``_train``.)
        """
        train = self.config.train
        callbacks = [
            LearningRateLogger(),
            RunRecorder(run),
            BestModelCheckpoint(run.model_path, train.monitor, best),
            PlotHistory(run.history_path, run.curves_path, model_name),
            keras.callbacks.TensorBoard(str(run.logs_dir)),
        ]
        if self.replicas > 1 and not self.multiworker:
            callbacks.insert(0, AverageReplicaStatistics(self.strategy))
        if train.lr_schedule == "plateau":
            callbacks.insert(0, keras.callbacks.ReduceLROnPlateau(
                train.monitor, mode=train.monitor_mode, factor=0.5,
                patience=max(2, train.epochs // 20)))
        if train.early_stopping_patience:
            callbacks.append(ResumableEarlyStopping(train.monitor,
                                                    train.early_stopping_patience, history))
        return callbacks


def _resume(model: keras.Model, run: RunFolder, shared: RunFolder,
            strategy: tf.distribute.Strategy, monitor: str) -> int:
    """Restore the newest checkpoint into ``model``; the epochs it completed, the same on
    every worker."""
    with strategy.scope():
        initial_epoch = restore_checkpoint(model, shared, align_history=run is shared)
    values = shared.read_history().get(monitor, [])
    if run is shared and values and shared.best_score(monitor) == values[-1]:
        # The last epoch was the best, and a kill may have come before its model.keras.
        with atomic_write(run.model_path) as temporary:
            model.save(temporary)
    chief_epoch = distribute.chief_value(strategy, initial_epoch)
    if chief_epoch != initial_epoch:
        raise ValueError(
            f"{shared.path}: this worker resumes after epoch {initial_epoch}, the chief after "
            f"epoch {chief_epoch:g}; every worker needs the same --output, on a file system "
            "they share, and the same --resume")
    return initial_epoch


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


