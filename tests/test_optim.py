"""The optimizer and its schedules."""

import numpy as np
import pytest


@pytest.mark.parametrize("warmup", [0, 7])
def test_movable_cosine_decay_equals_keras_cosine_decay(warmup):
    import keras

    from unet_cbam.config import TrainConfig
    from unet_cbam.optim import make_optimizer, movable_schedule

    train = TrainConfig(epochs=6, warmup_epochs=1 if warmup else 0, learning_rate=3e-3)
    movable = movable_schedule(train, 7)
    fixed = make_optimizer(train, 7)._learning_rate
    assert isinstance(fixed, keras.optimizers.schedules.CosineDecay)
    steps = [0, 1, 6, 7, 8, 20, 41, 42, 60]
    np.testing.assert_allclose([float(movable(s)) for s in steps],
                               [float(fixed(s)) for s in steps], rtol=1e-5)
    assert movable.get_config()["decay_steps"] == 42 - warmup
    assert movable_schedule(TrainConfig(lr_schedule="constant"), 7) is None
