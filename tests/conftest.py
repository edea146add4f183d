import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

ISBI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "isbi2012-membrane"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with the same seeds and float32 policy."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    # Without Keras' gc.collect(): over TensorFlow's object graph it takes 0.2-0.35 s, after
    # every one of ~470 tests (about 2.5 minutes of the suite); Python collects on its own.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    if not (ISBI / "images").is_dir():
        pytest.skip(f"ISBI 2012 data set not found at {ISBI}")
    return ISBI


@pytest.fixture(scope="session")
def isbi_run(isbi_dir, tmp_path_factory) -> Path:
    """A small binary model trained briefly on ISBI slices 0-7 (membrane, cell): trained
    once for all the pytest processes (``helpers.made_once``); copy it to write into it."""
    from helpers import made_once

    def make(folder: Path, data: Path) -> None:
        from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig
        from unet_cbam.training import train

        for kind in ("images", "masks"):
            (data / kind).mkdir()
            for index in range(8):
                (data / kind / f"slice{index:02d}.png").symlink_to(
                    isbi_dir / kind / f"slice{index:02d}.png")
        config = RunConfig(
            model=ModelConfig(num_classes=1, depth=3, base_filters=8, input_channels=1),
            data=DataConfig(data=str(data), val_fraction=0.25, patch_size=128,
                            class_names=["membrane", "cell"], augmentation="light"),
            train=TrainConfig(epochs=4, steps_per_epoch=6, batch_size=4, warmup_epochs=0,
                              learning_rate=3e-3, seed=1))
        train(config, folder / "run", progress=False)
        keras.backend.clear_session()

    return made_once(tmp_path_factory, "isbi_run", make) / "run"


def pytest_collection_modifyitems(config, items):
    """Slow tests first, then the rest (stable within each): pytest-xdist hands tests
    out in this order, so the longest start early and the short ones fill the gaps at
    the end, instead of one process finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
