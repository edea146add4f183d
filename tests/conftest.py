import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
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
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    if not (ISBI / "images").is_dir():
        pytest.skip(f"ISBI 2012 data set not found at {ISBI}")
    return ISBI
