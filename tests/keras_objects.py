"""One test helper for every registered Keras object (as keras-hub's ``run_layer_test``).

``run_layer_test`` checks a layer's config round trip, a safe-mode ``.keras``
round trip with identical outputs, its weight count, and mixed precision
(float16 compute, float32 gates/variables, finite outputs). ``run_object_test``
checks losses and metrics: config and serialization round trips in safe mode
give the same values.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np


def _numpy(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def run_layer_test(layer_class: type, init_kwargs: dict, input_shape: tuple[int, ...],
                   tmp_path: Path, expected_weights: int, *, seed: int = 0,
                   input_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Exercise ``layer_class(**init_kwargs)`` on random input; return its float32 output."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(*input_range, size=input_shape).astype("float32")

    layer = layer_class(**init_kwargs)
    output = _numpy(layer(x))
    assert output.shape == layer.compute_output_shape(x.shape) == x.shape[:-1] + output.shape[-1:]
    assert len(layer.weights) == expected_weights, [w.path for w in layer.weights]

    # get_config -> from_config rebuilds the same layer (exactly the constructor's arguments).
    config = layer.get_config()
    for name, value in init_kwargs.items():
        assert config[name] == value, (name, config[name], value)
    clone = layer_class.from_config(config)
    assert clone.get_config() == config
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_numpy(clone(x)), output, rtol=1e-6, atol=1e-7)

    # A .keras round trip in safe mode gives identical outputs.
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer_class(**init_kwargs, name="under_test")(inputs))
    model.set_weights(layer.get_weights())
    path = tmp_path / f"{layer_class.__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert isinstance(loaded.get_layer("under_test"), layer_class)
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))

    # Mixed precision: computes in float16, keeps float32 variables, stays finite.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = layer_class(**init_kwargs)
        mixed_output = _numpy(mixed(x.astype("float16")))
        assert mixed_output.dtype == np.float16
        assert all(w.dtype == "float32" for w in mixed.weights)
        assert np.isfinite(mixed_output).all()
        mixed.set_weights(layer.get_weights())
        np.testing.assert_allclose(_numpy(mixed(x.astype("float16"))).astype("float32"),
                                   output, rtol=2e-2, atol=2e-2)
    finally:
        keras.config.set_dtype_policy(previous)
    return output


def run_object_test(instance, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """A loss or metric: config and safe-mode serialization round trips give its value."""
    def value(obj) -> float:
        if isinstance(obj, keras.metrics.Metric):
            obj.reset_state()
            obj.update_state(y_true, y_pred)
            return float(obj.result())
        return float(obj(y_true, y_pred))

    expected = value(instance)
    config = instance.get_config()
    clone = type(instance).from_config(config)
    assert clone.get_config() == config
    assert value(clone) == expected
    serialized = keras.saving.serialize_keras_object(instance)
    restored = keras.saving.deserialize_keras_object(serialized, safe_mode=True)
    assert type(restored) is type(instance) and restored.get_config() == config
    assert value(restored) == expected
    return expected
