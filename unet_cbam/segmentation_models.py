"""The one place segmentation-models is imported.

segmentation-models picks its Keras flavour from ``SM_FRAMEWORK`` at import
time and prints a banner; both are handled here so no other module imports
it directly. Use ``from unet_cbam.segmentation_models import sm``.
"""

from __future__ import annotations

import contextlib
import io
import os

import keras

os.environ["SM_FRAMEWORK"] = "tf.keras"
with contextlib.redirect_stdout(io.StringIO()):
    import segmentation_models as sm  # noqa: E402

#: Keras submodules that segmentation-models' model functions expect as kwargs.
KERAS_SUBMODULES = {
    "backend": keras.backend,
    "layers": keras.layers,
    "models": keras.models,
    "utils": keras.utils,
}

__all__ = ["sm", "KERAS_SUBMODULES"]
