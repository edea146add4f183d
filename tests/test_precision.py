"""--precision: the rule of auto, training under it, prediction in another precision."""

import keras
import numpy as np
import pytest

import unet_cbam.precision as precision
from helpers import make_untrained_run
from unet_cbam.config import InferenceConfig, TrainConfig, from_dict
from unet_cbam.precision import choose_precision


@pytest.mark.parametrize("gpus, flags, expected, why", [
    ([], set(), "float32", "CPU without bfloat16 units"),
    ([], {"avx512f", "avx512_bf16"}, "bfloat16", "CPU with avx512_bf16: bfloat16 units"),
    ([], {"amx_bf16"}, "bfloat16", "CPU with amx_bf16"),
    ([(8, 6)], set(), "float16", "bfloat16's accuracy parity is not measured on a GPU yet"),
    ([(8, 6)], {"avx512_bf16"}, "float16", "compute capability 8.6"),
    ([(7, 5), (8, 0)], set(), "float16", "compute capability 7.5: float16 tensor cores"),
    ([(6, 1)], set(), "float32", "no tensor cores"),
])
def test_auto_follows_the_hardware(gpus, flags, expected, why):
    chosen, reason = choose_precision("auto", gpus=gpus, flags=flags)
    assert chosen == expected and why in reason


@pytest.mark.parametrize("environ, flags, expected, why", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"avx512_bf16"}, "float32",
     "CPU with avx512_bf16, but ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from them"),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, {"avx512_bf16"}, "float32",
     "ONEDNN_MAX_CPU_ISA=avx512_core_vnni keeps"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, {"avx512_bf16"}, "bfloat16",
     "CPU with avx512_bf16: bfloat16 units"),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_BF16"}, {"avx512_bf16", "amx_bf16"}, "bfloat16",
     "CPU with avx512_bf16: bfloat16 units"),  # AMX hidden, AVX512_BF16 still used
    ({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX"}, {"amx_bf16"}, "bfloat16", "amx_bf16"),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, {"avx512_bf16"}, "bfloat16", "avx512_bf16"),
    ({"ONEDNN_MAX_CPU_ISA": "NOT_AN_ISA"}, {"avx512_bf16"}, "bfloat16", "avx512_bf16"),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {"amx_bf16"}, "float32",
     "but TF_ENABLE_ONEDNN_OPTS=0 keeps oneDNN from them"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, set(), "float32", "CPU without bfloat16 units"),
])
def test_auto_counts_only_the_units_onednn_may_use(environ, flags, expected, why):
    """TensorFlow's bfloat16 speed on a CPU is oneDNN's: a capped oneDNN (the README's
    stand-in for an AVX2 CPU) trains float32, as the AVX2 CPU itself would."""
    chosen, reason = choose_precision("auto", gpus=[], flags=flags, environ=environ)
    assert chosen == expected and why in reason


def test_bfloat16_is_refused_where_onednn_has_no_bfloat16_convolution(caplog):
    """Measured on TensorFlow 2.21: capped at AVX2 the first bfloat16 convolution fails
    (`could not create a primitive descriptor`); at AVX512_CORE it runs, emulated."""
    for cap in ("AVX2", "sse41", "AVX2_VNNI", "AVX2_VNNI_2"):
        with pytest.raises(ValueError, match=f"ONEDNN_MAX_CPU_ISA={cap} leaves oneDNN no "
                                             "bfloat16 convolution.*--precision float32"):
            choose_precision("bfloat16", gpus=[], flags={"avx512_bf16"},
                             environ={"ONEDNN_MAX_CPU_ISA": cap})
    assert choose_precision("bfloat16", gpus=[], flags={"avx_ne_convert"},
                            environ={"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI_2"})[0] == "bfloat16"
    assert choose_precision("bfloat16", gpus=[], flags={"avx512_bf16"},
                            environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == ("bfloat16",
                                                                               "asked for")
    assert "no bfloat16 units oneDNN may use (ONEDNN_MAX_CPU_ISA=AVX512_CORE)" in caplog.text
    # A GPU run is not oneDNN's: the cap does not matter there.
    assert choose_precision("bfloat16", gpus=[(8, 0)], flags=set(),
                            environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})[0] == "bfloat16"


def test_auto_picks_bfloat16_only_where_its_parity_is_measured(monkeypatch):
    monkeypatch.setattr(precision, "BFLOAT16_PARITY_MEASURED", {"cpu": False, "gpu": True})
    chosen, reason = choose_precision("auto", gpus=[], flags={"amx_bf16"})
    assert chosen == "float32" and "parity is not measured yet" in reason
    assert choose_precision("auto", gpus=[(9, 0)], flags=set())[0] == "bfloat16"
    assert choose_precision("auto", gpus=[(7, 0)], flags=set())[0] == "float16"


def test_explicit_and_unknown_precisions(caplog):
    assert choose_precision("bfloat16", gpus=[], flags=set()) == ("bfloat16", "asked for")
    assert "precision bfloat16: this CPU has no bfloat16 units" in caplog.text
    caplog.clear()
    assert choose_precision("bfloat16", gpus=[], flags={"amx_bf16"})[0] == "bfloat16"
    assert choose_precision("float16", gpus=[(8, 0)], flags=set())[0] == "float16"
    assert not caplog.text
    with pytest.raises(ValueError, match="precision: 'half' is not one of"):
        from_dict(TrainConfig, {"precision": "half"})
    with pytest.raises(ValueError, match="precision 'half' is not one of"):
        choose_precision("half")


def test_prediction_rebuilds_a_model_in_the_precision_asked_for(tmp_path):
    from unet_cbam.loading import load_run, model_policy
    from unet_cbam.predict import BatchPredictor

    previous = keras.config.dtype_policy()
    folder = make_untrained_run(tmp_path / "run", channels=1, policy="mixed_float16")
    assert keras.config.dtype_policy().name == previous.name
    run = load_run(folder)
    assert model_policy(run.model) == "mixed_float16"
    predictor = BatchPredictor(run, InferenceConfig(precision="float32"))
    assert model_policy(predictor.models[0]) == "float32"
    assert keras.config.dtype_policy().name == previous.name
    image = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(predictor.models[0].predict(image, verbose=0),
                               run.model.predict(image, verbose=0), atol=5e-3)
    same = BatchPredictor(run, InferenceConfig(precision="float16"))
    assert same.models[0] is run.model


@pytest.mark.slow
def test_training_records_the_precision_it_chose(tmp_path):
    from helpers import write_pairs
    from unet_cbam.config import DataConfig, ModelConfig, RunConfig
    from unet_cbam.run import RunFolder
    from unet_cbam.training import train

    data = write_pairs(tmp_path / "data", count=3, size=(32, 32), channels=1)
    base = dict(model=ModelConfig(num_classes=1, depth=2, base_filters=4, input_channels=1),
                data=DataConfig(data=str(data), augmentation="none", val_fraction=0.34))
    train(RunConfig(**base, train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2)),
          tmp_path / "auto", progress=False)
    saved = RunFolder(tmp_path / "auto").config
    expected, why = choose_precision("auto")  # this machine's: float32, or bfloat16 (units)
    assert saved.train.precision == expected
    assert saved.plan["precision"] == {"value": expected, "reason": why}
    assert keras.config.dtype_policy().name == "float32"  # restored after training


def test_mixed_precision_is_the_former_name_of_float16():
    from unet_cbam.training import requested_precision

    assert requested_precision(TrainConfig(mixed_precision=True)) == "float16"
    assert requested_precision(TrainConfig(mixed_precision=True, precision="float32")) \
        == "float32"
    assert requested_precision(TrainConfig()) == "auto"
