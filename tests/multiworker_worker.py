"""One worker of the two-process multi-worker test (tests/test_multiworker.py).

    python tests/multiworker_worker.py WEIGHTS.npz -- TRAIN.PY OPTIONS...

Trains through train.py's own option parsing, with one extra callback: after the first
epoch (its checkpoint and history row written) it saves this worker's weights to
WEIGHTS.npz and ends the process at once (os._exit: no clean-up, like a kill).
"""

import os
import sys

import numpy as np

weights_path, options = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]

import keras  # noqa: E402

from unet_cbam.cli import train as cli  # noqa: E402
from unet_cbam.config import RunConfig  # noqa: E402
from unet_cbam.training import train  # noqa: E402


class DieAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        np.savez(weights_path, *[v.numpy() for v in self.model.weights])
        sys.stdout.flush()
        os._exit(17)


arguments = cli.build_parser().parse_args(options)
config = cli.apply_options(RunConfig(), arguments)
train(config, arguments.output, progress=False, callbacks=[DieAfterFirstEpoch()])
raise SystemExit("the callback should have ended the process")
