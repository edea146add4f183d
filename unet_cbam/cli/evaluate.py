"""Score predicted masks against ground truth (python -m unet_cbam.evaluate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unet_cbam.cli.options import quiet_tensorflow, setup_logging

quiet_tensorflow()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unet_cbam.evaluate",
        description="Per-image and per-class Dice, IoU, precision, recall and pixel accuracy "
                    "of a folder of predicted masks against ground truth, paired by file stem.")
    parser.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    parser.add_argument("--truth", type=Path, required=True, help="folder of true masks")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE.json",
                        help="summary JSON; per-image CSV beside it with the same name "
                             "(default: PRED/evaluation.json)")
    parser.add_argument("--config", type=Path, metavar="RUN/config.yaml",
                        help="take the mask encoding and class names from a training run")
    parser.add_argument("--num-classes", type=int,
                        help="1 for binary masks, N for N classes (default: detected)")
    parser.add_argument("--mask-encoding", choices=["binary", "indexed", "palette", "rgb"])
    parser.add_argument("--binary-threshold", type=int, default=0,
                        help="binary masks: foreground is any value above this")
    parser.add_argument("--ignore-value", type=int, help="truth value left out of the scores")
    parser.add_argument("--class-names", nargs="+", help="a name per class")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    setup_logging()
    from unet_cbam.config import RunConfig, load_yaml
    from unet_cbam.data.io import MaskCodec
    from unet_cbam.evaluate import evaluate_folders, write_reports
    from unet_cbam.training import class_names, codec_from_config

    names = arguments.class_names
    codec = None
    try:
        if arguments.config is not None:
            run = load_yaml(RunConfig, arguments.config)
            codec = codec_from_config(run)
            names = names or class_names(run.data, codec.num_labels)
        elif arguments.num_classes is not None or arguments.mask_encoding is not None:
            num_classes = arguments.num_classes or 1
            encoding = arguments.mask_encoding or ("binary" if num_classes == 1 else "indexed")
            codec = MaskCodec(encoding, num_classes, threshold=arguments.binary_threshold,
                              ignore_value=arguments.ignore_value)
        evaluation = evaluate_folders(arguments.pred, arguments.truth, codec, names)
    except (ValueError, FileNotFoundError) as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    report = arguments.report or arguments.pred / "evaluation.json"
    json_path, csv_path = write_reports(evaluation, report)
    print_summary(evaluation.summary())
    print(f"\nper image: {csv_path}\nsummary:   {json_path}")
    problems = evaluation.missing_predictions or evaluation.missing_truths or evaluation.errors
    return 1 if problems else 0


def print_summary(summary: dict) -> None:
    print(f"{summary['images']} image(s)")
    print(f"{'class':<16}{'Dice':>8}{'IoU':>8}{'prec.':>8}{'recall':>8}   (mean over images)")
    for name, entry in summary["classes"].items():
        values = [entry[f"mean_{s}"] for s in ("dice", "iou", "precision", "recall")]
        print(f"{name:<16}" + "".join(f"{v:>8.4f}" if v is not None else f"{'-':>8}"
                                      for v in values))
    if summary["mean_pixel_accuracy"] is not None:
        print(f"pixel accuracy {summary['mean_pixel_accuracy']:.4f}")
    if summary["missing_predictions"]:
        print(f"no prediction for {len(summary['missing_predictions'])} truth mask(s): "
              f"{', '.join(summary['missing_predictions'][:10])}")
    if summary["missing_truths"]:
        print(f"no truth for {len(summary['missing_truths'])} prediction(s): "
              f"{', '.join(summary['missing_truths'][:10])}")
    for error in summary["errors"]:
        print(f"error: {error}")


if __name__ == "__main__":
    sys.exit(main())
