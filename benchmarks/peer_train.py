"""train.py with the peer network: segmentation-models' own sm.Unet (resnet18, random init).

Everything else is train.py's: the fingerprint and plan, the data pipeline, loss,
schedule, time budget, checkpoints, post-processing and the run folder, which predict.py
then uses as any other (it loads the saved network). Pass ``--encoder resnet18
--attention none`` so that the run's config records the encoder whose input-size divisor
(32) the plan and predict.py use; ``benchmarks/datasets.py --variants peers`` does.

    python -m benchmarks.peer_train --data DIR --encoder resnet18 --attention none [...]
"""

from __future__ import annotations

import functools

from benchmarks.common import build_peer


def use_peer() -> None:
    """Make ``unet_cbam.training.train`` (which train.py's main imports when it runs, and
    train_folds calls) build the peer network."""
    import unet_cbam.training as training

    if not isinstance(training.train, functools.partial):
        training.train = functools.partial(training.train, build_model=build_peer)


if __name__ == "__main__":
    from unet_cbam.cli import train as cli

    use_peer()
    cli.entry()  # train.py's own entry: main, then an exit that cannot hang
