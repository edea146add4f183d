"""unet-cbam-evaluate: score a folder of predicted masks against ground truth.

    unet-cbam-evaluate --pred DIR --truth DIR [--report FILE.json]
    python -m unet_cbam.cli.evaluate --pred DIR --truth DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unet_cbam.cli.options import add_logging_options, setup_logging


def _color(text: str) -> list[int]:
    try:
        color = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not R,G,B") from None
    if len(color) != 3 or not all(0 <= v <= 255 for v in color):
        raise argparse.ArgumentTypeError(f"{text!r} is not R,G,B with values 0-255")
    return color


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options; ``prog`` names the command in help and errors (default: as invoked)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Per-image and per-class Dice, IoU, precision, recall and pixel accuracy "
                    "of a folder of predicted masks against ground truth, paired by file stem. "
                    "The mask encoding comes from --config, or from the options given here "
                    "with the rest detected from the true masks.")
    parser.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    parser.add_argument("--truth", type=Path, required=True, help="folder of true masks")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE.json",
                        help="summary JSON; per-image CSV beside it with the same name "
                             "(default: PRED/evaluation.json)")
    parser.add_argument("--config", type=Path, metavar="RUN_DIR|config.yaml",
                        help="take the mask encoding and class names from a training run")
    parser.add_argument("--num-classes", type=int,
                        help="1 for binary masks, N for N classes (default: detected; indexed "
                             "and palette masks: largest value + 1)")
    parser.add_argument("--mask-encoding", choices=["binary", "indexed", "palette", "rgb"],
                        help="default: detected (palette PNGs: palette; at most two values: "
                             "binary; else indexed)")
    parser.add_argument("--binary-threshold", type=int, default=0,
                        help="binary masks: foreground is any value above this (default: 0)")
    parser.add_argument("--ignore-value", type=int, help="truth value left out of the scores")
    parser.add_argument("--class-colors", nargs="+", type=_color, metavar="R,G,B",
                        help="rgb masks: the colour of each class, in class order")
    parser.add_argument("--class-names", nargs="+", help="a name per class")
    parser.add_argument("--instances", action="store_true",
                        help="PRED holds instance label images (predict.py --instances): "
                             "object-level precision, recall and F1 at IoU > 0.5 instead "
                             "(true masks: instance labels, or binary masks numbered by "
                             "connected components); the report defaults to "
                             "PRED/instance_evaluation.json")
    add_logging_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Score ``--pred`` against ``--truth``; the exit status (1: unpaired or bad files)."""
    parser = build_parser(prog)
    arguments = parser.parse_args(argv)
    setup_logging(arguments)
    from unet_cbam.config import RunConfig, load_yaml
    from unet_cbam.evaluate import (
        evaluate_folders,
        format_summary,
        infer_codec,
        mask_files,
        write_reports,
    )
    from unet_cbam.run import RunFolder, class_names, codec_from_config

    if arguments.instances:
        return _instances(arguments, parser.prog)
    names = arguments.class_names
    try:
        if arguments.config is not None:
            config = (RunFolder(arguments.config).config if arguments.config.is_dir()
                      else load_yaml(RunConfig, arguments.config))
            codec = codec_from_config(config)
            names = names or class_names(config.data, codec)
        else:
            codec = infer_codec(
                mask_files(arguments.truth), encoding=arguments.mask_encoding,
                num_classes=arguments.num_classes, threshold=arguments.binary_threshold,
                ignore_value=arguments.ignore_value, colors=arguments.class_colors)
        evaluation = evaluate_folders(arguments.pred, arguments.truth, codec, names)
    except (ValueError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    report = arguments.report or arguments.pred / "evaluation.json"
    json_path, csv_path = write_reports(evaluation, report)
    print(format_summary(evaluation.summary()))
    print(f"\nper image: {csv_path}\nsummary:   {json_path}")
    problems = evaluation.missing_predictions or evaluation.missing_truths or evaluation.errors
    return 1 if problems else 0


def _instances(arguments, prog: str) -> int:
    import json

    from unet_cbam.data.io import ImageReadError
    from unet_cbam.evaluate import evaluate_instance_folders
    from unet_cbam.files import write_text

    try:
        scores = evaluate_instance_folders(arguments.pred, arguments.truth)
    except (ValueError, FileNotFoundError, ImageReadError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    report = arguments.report or arguments.pred / "instance_evaluation.json"
    write_text(report, json.dumps(scores, indent=2))
    print(f"objects (IoU > 0.5) over {scores['images']} image(s): F1 {scores['f1']:.4f}, "
          f"precision {scores['precision']:.4f}, recall {scores['recall']:.4f} "
          f"({scores['true_positives']} matched, {scores['false_positives']} false, "
          f"{scores['false_negatives']} missed)\nsummary: {report}")
    return 1 if scores["missing_predictions"] or scores["missing_truths"] else 0


if __name__ == "__main__":
    sys.exit(main())
