"""The optimizer and its learning-rate schedule, including the cosine schedule whose
horizon the time budget's pacer (``unet_cbam.callbacks.TimeBudget``) moves."""

from __future__ import annotations

import logging
import math

import keras

from unet_cbam.config import TrainConfig
from unet_cbam.data.dataset import PairSource

logger = logging.getLogger(__name__)


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
