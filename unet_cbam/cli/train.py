"""train.py: train a CBAM-UNet on a folder of images and masks.

    python train.py --data DIR [--config FILE.yaml] [--output RUN_DIR] [--epochs N] ...

Every config field is an option (see --help). Precedence: defaults, then
--config, then options. With --resume of an existing run, the run's saved
config.yaml takes the place of the defaults and --config (which is then an
error): options may change the training section only.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from unet_cbam.cli.options import (
    add_config_options,
    add_logging_options,
    apply_options,
    exit_at_once,
    import_tensorflow,
    setup_logging,
)
from unet_cbam.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_yaml
from unet_cbam.files import one_line
from unet_cbam.run import RunFolder

logger = logging.getLogger("unet_cbam.train")
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options; ``prog`` names the command in help and errors (default: as invoked)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, metavar="FILE.yaml",
                        help="a run config (model/data/train sections), e.g. a run's config.yaml")
    parser.add_argument("--output", type=Path, metavar="RUN_DIR",
                        help="run folder to create (default: runs/<date>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its last completed epoch "
                             "(starts it if the folder holds no run yet)")
    parser.add_argument("--quiet", action="store_true", help="one log line per epoch")
    add_logging_options(parser)
    add_config_options(parser, SECTIONS)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train (or resume) one run or a cross-validation; the exit status."""
    started = time.perf_counter()  # a time budget is the whole command's
    parser = build_parser(prog)
    arguments = parser.parse_args(argv)
    run = RunFolder(arguments.output or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    setup_logging(arguments)
    try:
        base = RunConfig()
        if arguments.resume and run.exists():
            if arguments.config is not None:
                raise ValueError(
                    f"--config {arguments.config} cannot be used with --resume of the run in "
                    f"{run.path}: it continues with its own {run.config_path.name}; change "
                    "its training section with options such as --epochs")
            base = run.config
        elif arguments.config is not None:
            base = load_yaml(RunConfig, arguments.config)
        config = apply_options(base, arguments)
        if config.train.strategy == "multiworker":
            from unet_cbam.distribute import describe_cluster

            describe_cluster()  # a missing or malformed cluster: refused before any work
    except (ValueError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2

    import_tensorflow(arguments)
    from unet_cbam.data.verify import DataError
    from unet_cbam.folds import train_folds
    from unet_cbam.training import train

    try:
        if config.train.folds is not None:
            results = train_folds(config, run, resume=arguments.resume, started=started,
                                  progress=not arguments.quiet)
            _print_folds(run, results)
            return 0
        result = train(config, run, resume=arguments.resume, progress=not arguments.quiet,
                       started=started)
        if not result.chief:
            print(f"\nthis worker's part is done; the chief wrote the run folder {run.path}")
            return 0
    except DataError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a crash inside training, e.g. in a tf.data worker
        logger.debug("training failed", exc_info=True)
        message = one_line(error)[:600]
        print(f"{parser.prog}: error: training failed: {type(error).__name__}: {message}"
              f"{'' if arguments.verbose else ' (--verbose shows the traceback)'}",
              file=sys.stderr)
        return 1

    scores = ", ".join(f"{name} Dice {value['dice']:.3f}"
                       for name, value in result.metrics["classes"].items())
    print(f"\nrun folder: {run.path}\n"
          f"  best model:      {run.model_path} "
          f"(epoch {result.metrics['best_epoch']}; validation {scores})\n"
          f"  training curves: {run.curves_path}\n"
          f"  history:         {run.history_path}\n"
          f"  TensorBoard:     tensorboard --logdir {run.logs_dir}")
    return 0


def _print_folds(run: RunFolder, results) -> None:
    for result in results:
        scores = ", ".join(f"{name} Dice {value['dice']:.3f}"
                           for name, value in result.metrics["classes"].items())
        print(f"{result.run_dir}: validation {scores}")
    if run.cv_metrics_path.is_file():
        print(f"\ncross-validation: {run.cv_metrics_path}\n"
              f"predict with all folds averaged: predict.py --model {run.path} ...")
    else:
        print(f"\n{run.cv_metrics_path.name} follows once every fold is trained "
              "(--fold K for the others)")


def entry() -> None:
    """The console script: ``main``, then an exit that cannot hang (``exit_at_once``)."""
    exit_at_once(main())


if __name__ == "__main__":
    entry()
