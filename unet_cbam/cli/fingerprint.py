"""unet-cbam-fingerprint: what a data folder holds, and the plan train.py would make.

    unet-cbam-fingerprint DIR [--num-classes N] [--input-channels C] [--output FILE.json]
    python -m unet_cbam.cli.fingerprint DIR

DIR holds images/ and masks/ paired by file stem, as for train.py. Prints the
fingerprint (sizes, intensities, class frequencies, object sizes, mask
formats) and the automatic configuration with its reasons; nothing is
trained. Problems are reported like train.py reports them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unet_cbam.cli.options import add_logging_options, setup_logging


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options; ``prog`` names the command in help and errors (default: as invoked)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="data folder holding images/ and masks/")
    parser.add_argument("--num-classes", default="auto",
                        type=lambda text: text if text == "auto" else int(text),
                        help="1 for binary masks, N for N classes, or auto: read from the "
                             "masks as train.py does (default: auto)")
    parser.add_argument("--input-channels", type=int, default=3,
                        help="channels the model would take (default: 3)")
    parser.add_argument("--mask-encoding", default="auto",
                        choices=["auto", "binary", "indexed", "palette", "rgb"],
                        help="as train.py's --mask-encoding (default: auto)")
    parser.add_argument("--normalize", default="auto",
                        choices=["auto", "bitdepth", "percentile", "zscore"],
                        help="as train.py's --normalize (default: auto)")
    parser.add_argument("--output", type=Path, metavar="FILE.json",
                        help="also write the fingerprint and the plan as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_logging_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Print a data folder's fingerprint and plan; the exit status (2: no usable pairs)."""
    parser = build_parser(prog)
    arguments = parser.parse_args(argv)
    setup_logging(arguments)
    from unet_cbam.config import DataConfig, ModelConfig, RunConfig
    from unet_cbam.explore import inspect_data
    from unet_cbam.files import write_text
    from unet_cbam.fingerprint import format_fingerprint
    from unet_cbam.plan import plan_rows, plan_run
    from unet_cbam.tables import markdown_table

    try:
        if not arguments.data.is_dir():
            raise ValueError(f"{arguments.data}: no such folder")
        data = DataConfig(data=str(arguments.data), mask_encoding=arguments.mask_encoding,
                          normalize=arguments.normalize)
        model = ModelConfig(num_classes=arguments.num_classes,
                            input_channels=arguments.input_channels)
        overview = inspect_data(data, model, progress=not arguments.quiet)
        fingerprint = overview.fingerprint
        if fingerprint is None:
            lines = "\n".join(f"  - {p}" for p in overview.problems)
            raise ValueError(f"no usable pairs in {arguments.data}:\n{lines}")
        plan = plan_run(RunConfig(model=model, data=data), fingerprint).plan
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"## Fingerprint of {arguments.data}\n\n{format_fingerprint(fingerprint)}\n")
    print("## Plan (train.py --data with no tuning options)\n")
    print(markdown_table(plan_rows(plan), ["setting", "value", "reason"]))
    if overview.problems:
        print(f"\n## {len(overview.problems)} problem(s) and warning(s)\n")
        print("\n".join(f"- {p}" for p in overview.problems))
    if arguments.output is not None:
        write_text(arguments.output, json.dumps({"fingerprint": fingerprint, "plan": plan},
                                                indent=2))
        print(f"\nwritten: {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
