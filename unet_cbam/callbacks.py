"""Keras callbacks of a training run: learning-rate logging, the atomic best model, the
run folder's checkpoint and history, the curves figure, replica statistics, and the time
budget's pacer (``TimeBudget``) with the step timing it starts from."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from unet_cbam import distribute
from unet_cbam.config import monitor_mode
from unet_cbam.files import atomic_write
from unet_cbam.optim import MovableCosineDecay
from unet_cbam.run import RunFolder, read_history
from unet_cbam.visualize import plot_history

logger = logging.getLogger(__name__)


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
        """Whether ``value`` beats the best so far (lower for losses, higher for scores)."""
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


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping, continued where a resumed run stopped.

    Keras restarts its count at every ``fit``, so a run resumed after each few epochs
    would never stop early. This takes the best value and the epochs waited since it
    from the run's earlier epochs (``history``: the monitor's values, oldest first).
    """

    def __init__(self, monitor: str, patience: int, history: list[float] | None = None):
        super().__init__(monitor, mode=monitor_mode(monitor), patience=patience)
        self.history = [float(value) for value in history or []]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        values = [(index, value) for index, value in enumerate(self.history)
                  if not np.isnan(value)]
        if values:
            pick = min if monitor_mode(self.monitor) == "min" else max
            best_index, self.best = pick(values, key=lambda item: item[1])  # first of ties
            self.wait = len(self.history) - 1 - best_index


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
    """Redraw training_curves.png from history.csv after an epoch, at most every
    ``interval`` seconds, and at the end of training.

    A drawing takes about 1.5 s on 2 cores (2026-12-07, AVX2 EPYC): after every epoch
    of a run whose epochs take seconds, that was a fifth of its time. An epoch of
    ``interval`` seconds or more is drawn after every epoch; a run stopped from outside
    leaves a figure at most ``interval`` seconds behind history.csv.
    """

    INTERVAL = 30.0

    def __init__(self, history_path: Path, figure_path: Path, title: str,
                 interval: float = INTERVAL, clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.history_path, self.figure_path, self.title = history_path, figure_path, title
        self.interval, self.clock = interval, clock
        self.drawn: float | None = None
        self.pending = False

    def on_epoch_end(self, epoch, logs=None):
        self.pending = True
        if self.drawn is None or self.clock() - self.drawn >= self.interval:
            self.draw()

    def on_train_end(self, logs=None):
        if self.pending:
            self.draw()

    def draw(self) -> None:
        """Redraw the figure from history.csv now."""
        self.drawn, self.pending = self.clock(), False
        if self.history_path.exists():
            figure = plot_history(read_history(self.history_path), self.title)
            with atomic_write(self.figure_path) as temporary:
                figure.savefig(temporary, dpi=110, format="png")


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
    """Fits training and its validation into ``seconds`` of wall time: the pacer of
    ``--time-budget``.

    The plan turns the budget into epochs from a few steps of a throwaway
    model and one validation pass, which on a busy 2-core machine read 20-30 %
    off either way. After each epoch this re-plans the epochs still to run
    from the run's own pace: its training steps (all but the first, which
    traces the training function) and what an epoch took besides them, on
    average (validation, checkpoints, figures; for the first epoch, whose
    validation also traces the test function, at most the planned
    ``validation_seconds``). An
    epoch is planned where it ends before ``seconds`` are up, or at most
    ``LAST_EPOCH_OVERRUN`` x ``seconds`` after. Where the time left after the
    whole epochs holds at least ``MIN_LAST_EPOCH`` of an epoch's steps and its
    validation, one shorter last epoch is planned to fill it (``last_steps``):
    whole epochs alone left up to an epoch of the budget unused (126 s of 1200
    in a CTC run of 157-s epochs). The horizon of a ``MovableCosineDecay`` moves
    with the steps planned, so the learning rate still anneals over the whole
    run. Within an epoch, training stops at ``OVERRUN`` x ``seconds`` (a
    machine that slows down).

    Args:
        seconds: the wall time left for training and validation, from ``fit``'s start.
        steps_per_epoch: the plan's steps an epoch.
        epochs: the plan's epochs (the run's total, counting those before
            ``initial_epoch`` of a resumed run).
        max_epochs: the most epochs it may extend to (``fit``'s ``epochs``).
        schedule: the schedule whose horizon follows the epochs, if any.
        agree: ``value -> the chief's value`` (every worker plans the same epochs).
        replanned: called with ``(epochs, seconds_a_step, after_epochs, last_steps)`` on a
            change (``last_steps``: the shorter last epoch's steps, or None).
        validation_seconds: the plan's validation time an epoch (used after the first).
        last_steps: the shorter last epoch's steps, as planned before (a resumed run's,
            from its plan's ``last_epoch_steps``), or None.
    """

    OVERRUN = 1.02
    #: A last epoch that would end this share of ``seconds`` late is still planned (the
    #: rest of the command was reserved apart): rounding to the nearest epoch, not down.
    LAST_EPOCH_OVERRUN = 0.02
    #: The least share of an epoch's steps worth a shorter last epoch (which costs a
    #: whole validation pass).
    MIN_LAST_EPOCH = 0.25

    def __init__(self, seconds: float, steps_per_epoch: int = 1, epochs: int = 1,
                 max_epochs: int | None = None, schedule: MovableCosineDecay | None = None,
                 agree: Callable[[float], float] = lambda value: value,
                 replanned: Callable[[int, float, int, int | None], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 validation_seconds: float | None = None, last_steps: int | None = None):
        super().__init__()
        self.seconds, self.steps_per_epoch, self.epochs = seconds, steps_per_epoch, epochs
        self.validation_seconds = validation_seconds
        self.max_epochs = max_epochs if max_epochs is not None else epochs
        self.schedule, self.agree, self.replanned, self.clock = schedule, agree, replanned, clock
        self.stepping, self.steps, self.first = 0.0, 0, 0.0
        self.begun = self.epoch_begun = self.step_begun = None
        self.epoch_stepping, self.epochs_seen, self.besides = 0.0, 0, 0.0
        self.epoch, self.last_steps = 0, last_steps

    def on_train_begin(self, logs=None):
        self.begun = self.clock()
        if self.last_steps is not None:  # resumed: the horizon of the steps as planned
            self._move_horizon()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_begun, self.epoch_stepping, self.epoch = self.clock(), 0.0, epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.step_begun = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        seconds = now - self.step_begun
        self.stepping += seconds
        self.epoch_stepping += seconds
        self.steps += 1
        if self.steps == 1:
            self.first = seconds  # it traces the training function: not the pace
        if now - self.begun > self.OVERRUN * self.seconds and not self.model.stop_training:
            logger.warning("time budget: %.0f s of %.0f s spent inside an epoch; stopping",
                           now - self.begun, self.seconds)
            self.model.stop_training = True
        elif (self.last_steps is not None and self.epoch + 1 == self.epochs
              and batch + 1 >= self.last_steps and not self.model.stop_training):
            self.model.stop_training = True  # the shorter last epoch: validated, then done
            # Keras' own line for this epoch still reads "N/N" steps: say what ran
            logger.info("time budget: epoch %d, the last, stops after its %d planned steps "
                        "of %d", self.epoch + 1, batch + 1, self.steps_per_epoch)

    @property
    def pace(self) -> float:
        """Seconds a training step, the first (tracing) one left out."""
        if self.steps > 1:
            return (self.stepping - self.first) / (self.steps - 1)
        return self.stepping

    def on_epoch_end(self, epoch, logs=None):
        done, now = epoch + 1, self.clock()
        besides = max(0.0, now - self.epoch_begun - self.epoch_stepping)  # validation ...
        if self.validation_seconds is not None and self.epochs_seen == 0:
            besides = min(besides, self.validation_seconds)  # not the test function's tracing
        self.epochs_seen += 1
        self.besides += besides
        if self.last_steps is not None and done >= self.epochs:
            self.model.stop_training = True  # the shorter last epoch: the plan is done
            return
        besides = self.besides / self.epochs_seen  # the mean: one slow pass does not swing
        # the plan (and the learning rate's horizon) back and forth
        left = self.seconds - (now - self.begun)
        cost = self.pace * self.steps_per_epoch + besides
        more = int(max(0.0, left) // cost)
        rest = left - more * cost
        last = None
        if rest > cost - self.LAST_EPOCH_OVERRUN * self.seconds:
            more += 1  # ends at most LAST_EPOCH_OVERRUN late
        else:  # a shorter last epoch, where enough of one fits
            steps = int(max(0.0, rest - besides) // max(self.pace, 1e-9))
            if steps >= max(1.0, self.MIN_LAST_EPOCH * self.steps_per_epoch):
                more, last = more + 1, min(steps, self.steps_per_epoch - 1)
        if done + more > self.max_epochs:  # capped: every epoch whole
            more, last = self.max_epochs - done, None
        # every worker calls agree() as often as the chief: it is a collective
        epochs = int(self.agree(float(done + more)))
        last = int(self.agree(float(-1 if last is None else last)))
        last = None if last < 0 else last
        if (epochs, last) != (self.epochs, self.last_steps):
            def shown(count: int, steps: int | None) -> str:
                return f"{count} epochs" + (f", the last of {steps} steps" if steps else "")
            logger.info("time budget: %.3g s a step and %.3g s of validation so far, %.0f s of "
                        "%.0f s spent after epoch %d: %s instead of %s", self.pace, besides,
                        now - self.begun, self.seconds, done, shown(epochs, last),
                        shown(self.epochs, self.last_steps))
            self.epochs, self.last_steps = epochs, last
            self._move_horizon()
            if self.replanned is not None:
                self.replanned(epochs, self.pace, done, last)
        if done >= self.epochs:
            self.model.stop_training = True

    def _move_horizon(self) -> None:
        """The cosine schedule's horizon at the steps now planned."""
        if self.schedule is not None:
            self.schedule.decay_steps.assign(float(max(
                1, self.planned_steps - self.schedule.warmup_steps)))

    @property
    def planned_steps(self) -> int:
        """The run's training steps as now planned, the shorter last epoch counted."""
        short = self.steps_per_epoch - self.last_steps if self.last_steps is not None else 0
        return self.epochs * self.steps_per_epoch - short

