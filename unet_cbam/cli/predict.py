"""predict.py: masks for folders of images of any size, from a trained run.

    python predict.py --model RUN_DIR|FILE.keras --input DIR|FILE|GLOB --output DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from unet_cbam.cli.options import (
    add_config_options,
    add_logging_options,
    apply_options,
    import_tensorflow,
    setup_logging,
)
from unet_cbam.config import InferenceConfig

logger = logging.getLogger("unet_cbam.predict")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options; ``prog`` names the command in help and errors (default: as invoked)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Outputs: OUTPUT/<stem>.png masks in the training masks' encoding (binary "
               "masks in the same two values, class ids, or palette PNGs), summary.csv, "
               "and on request probabilities/, overlays/, attention/. Existing outputs are "
               "kept, so an interrupted run resumes; the exit status is 1 if any input "
               "failed.")
    parser.add_argument("--model", type=Path, metavar="RUN_DIR|FILE.keras",
                        help="a run folder from train.py, or its model.keras "
                             "(config.yaml must be beside it)")
    parser.add_argument("--input", metavar="DIR|FILE|GLOB",
                        help="a folder of images (with its subfolders), one image, or a glob "
                             "such as 'scans/**/*.tif'; outputs mirror the folder tree")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="folder for the masks (created if needed); it must not hold any "
                             "input, so inputs are never overwritten or read back")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write probability maps to OUTPUT/probabilities/")
    parser.add_argument("--probability-format", choices=["png", "npy"], default="png",
                        help="16-bit PNG (one per class for several classes) or float16 .npy")
    parser.add_argument("--save-overlays", action="store_true",
                        help="also write the mask over the image to OUTPUT/overlays/")
    parser.add_argument("--save-attention", action="store_true",
                        help="also write each skip level's CBAM attention to OUTPUT/attention/")
    parser.add_argument("--save-uncertainty", action="store_true",
                        help="also write the per-pixel predictive entropy of the (fold- and "
                             "TTA-averaged) probabilities, 0-65535 for 0-1, to "
                             "OUTPUT/uncertainty/")
    parser.add_argument("--instances", nargs="?", const="components",
                        choices=["components", "watershed"],
                        help="binary models: also write 16-bit instance labels to "
                             "OUTPUT/instances/: connected components, or 'watershed' to split "
                             "touching objects (nuclei); with --truth, object-level F1 at "
                             "IoU 0.5 too")
    parser.add_argument("--overwrite", action="store_true",
                        help="predict again even where outputs exist")
    parser.add_argument("--shard", default=None, metavar="I/N|auto",
                        help="only the I-th of N interleaved parts of the sorted file list "
                             "(1-based), to split a folder over N machines; auto: from a "
                             "SLURM job array or a Kubernetes Indexed Job. Each shard writes "
                             "summary-shardIofN.csv; --merge-summaries joins them")
    parser.add_argument("--shard-count", type=int, default=None, metavar="N",
                        help="--shard auto in a Kubernetes Indexed Job: the number of shards "
                             "(its completions; or set UNET_CBAM_SHARD_COUNT)")
    parser.add_argument("--merge-summaries", type=Path, default=None, metavar="OUTPUT",
                        help="after the shards: join OUTPUT/summary-shard*.csv into "
                             "OUTPUT/summary.csv and check that every input (of --input, "
                             "when given) was predicted exactly once; exit status 1 if not")
    parser.add_argument("--truth", type=Path, default=None, metavar="DIR",
                        help="score the masks against the true masks in DIR afterwards "
                             "(OUTPUT/evaluation.json and .csv)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_logging_options(parser)
    add_config_options(parser, {"inference": InferenceConfig})
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Predict, and with ``--truth`` evaluate; the exit status (1: an item failed)."""
    parser = build_parser(prog)
    arguments = parser.parse_args(argv)
    setup_logging(arguments)
    if arguments.merge_summaries is not None:
        return _merge(arguments, parser.prog)
    missing = [f"--{name}" for name in ("model", "input", "output")
               if getattr(arguments, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    import_tensorflow(arguments)
    from unet_cbam.evaluate import format_summary, write_reports
    from unet_cbam.files import write_text
    from unet_cbam.inputs import check_output_folder, input_root, list_inputs
    from unet_cbam.loading import load_run
    from unet_cbam.predict import BatchPredictor, OutputOptions
    from unet_cbam.shards import (
        parse_shard,
        shard_from_environment,
        shard_summary_name,
        take_shard,
    )

    try:
        inference = apply_options(_Holder(), arguments).inference
        if arguments.shard == "auto":
            shard = shard_from_environment(count=arguments.shard_count)
        else:
            shard = parse_shard(arguments.shard) if arguments.shard else None
        files = list_inputs(arguments.input, arguments.output)
        if shard:
            files = take_shard(files, *shard)
        if not files:
            raise FileNotFoundError(f"{arguments.input}: no images found")
        if arguments.truth is not None and not arguments.truth.is_dir():
            raise FileNotFoundError(f"{arguments.truth}: --truth folder not found")
        check_output_folder(arguments.output, files)
        run = load_run(arguments.model)
        options = OutputOptions(
            save_probabilities=arguments.save_probabilities,
            probability_format=arguments.probability_format,
            save_overlays=arguments.save_overlays, save_attention=arguments.save_attention,
            save_uncertainty=arguments.save_uncertainty, instances=arguments.instances,
            overwrite=arguments.overwrite)
        predictor = BatchPredictor(run, inference, arguments.output, options)
    except (ValueError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2

    summary_name = shard_summary_name(*shard) if shard else "summary.csv"
    logger.info("%d image(s) with %s (tile %d, overlap %.2f%s)", len(files), run.path,
                inference.tile_size, inference.overlap, ", TTA" if inference.tta else "")
    result = predictor.run_files(files, progress=not arguments.quiet, summary_name=summary_name,
                                 root=input_root(arguments.input))
    counts = {status: sum(item.status == status for item in result.items)
              for status in ("ok", "skipped", "failed")}
    summary = result.summary_csv or "not written, see the error above"
    print(f"\n{counts['ok']} predicted, {counts['skipped']} already done, "
          f"{counts['failed']} failed -> {arguments.output}  (summary: {summary})")
    for item in result.failed:
        print(f"  failed: {item.file}: {item.error}", file=sys.stderr)

    if arguments.truth is not None:
        evaluation = predictor.evaluate(result, arguments.truth)
        print()
        print(format_summary(evaluation.summary()))
        try:
            json_path, csv_path = write_reports(evaluation, arguments.output / "evaluation.json")
            print(f"evaluation: {json_path}, {csv_path}")
            if arguments.instances:
                objects = predictor.evaluate_instances(result, arguments.truth)
                path = arguments.output / "instance_evaluation.json"
                write_text(path, json.dumps(objects, indent=2))
                print(f"objects (IoU > 0.5) over {objects['images']} image(s): F1 "
                      f"{objects['f1']:.4f}, precision {objects['precision']:.4f}, recall "
                      f"{objects['recall']:.4f}\ninstance evaluation: {path}")
        except OSError as error:
            print(f"{parser.prog}: error: cannot write the evaluation in {arguments.output} "
                  f"({error.strerror or error})", file=sys.stderr)
            return 1
    return 1 if result.failed or result.summary_csv is None else 0


def _merge(arguments, prog: str) -> int:
    """--merge-summaries: join the shard summaries; status 1 unless all is well."""
    from unet_cbam.inputs import list_inputs
    from unet_cbam.shards import merge_summaries

    try:
        inputs = list_inputs(arguments.input, arguments.merge_summaries) \
            if arguments.input else None
        report = merge_summaries(arguments.merge_summaries, inputs)
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"{report.rows} input(s) from {report.shards} shard(s) -> {report.summary}")
    for label, values in (("missing shard summaries", report.missing_shards),
                          ("predicted by more than one shard", report.duplicates),
                          ("failed", report.failed),
                          ("in --input but in no shard's summary", report.not_predicted)):
        if values:
            shown = ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")
            print(f"  {label} ({len(values)}): {shown}", file=sys.stderr)
    return 0 if report.ok else 1


@dataclasses.dataclass
class _Holder:
    """A one-section config so the generated --tile-size ... options can be applied."""

    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)


if __name__ == "__main__":
    sys.exit(main())
