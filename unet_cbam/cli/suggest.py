"""unet-cbam suggest: which unlabelled images to label next, ranked by what a mask would
teach the model.

    unet-cbam suggest --model RUN_DIR --images DIR|FILE|GLOB --count K [--output DIR]

Each image is predicted in several views by every member of the run; the images are
ranked by their predictive entropy (which holds the views' and members' disagreement),
with near-identical images moved down (see ``unet_cbam.suggest``). Writes
OUTPUT/suggestions.csv (every input once: rank, scores, chosen, reason; bad files last,
with their error) and OUTPUT/contact-sheet.png (the top K with their uncertainty maps).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from unet_cbam.cli.options import add_logging_options, import_tensorflow, setup_logging

logger = logging.getLogger("unet_cbam.suggest")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options; ``prog`` names the command in help and errors (default: as invoked)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, metavar="RUN_DIR|FILE.keras",
                        help="a run folder from train.py (a cross-validation run's folds "
                             "all vote), or its model.keras")
    parser.add_argument("--images", required=True, metavar="DIR|FILE|GLOB",
                        help="the unlabelled images: a folder (with its subfolders), a file "
                             "or a glob")
    parser.add_argument("--count", type=int, required=True, metavar="K",
                        help="how many images to choose (the CSV ranks them all)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="folder for suggestions.csv and contact-sheet.png (default: "
                             "suggestions-<date>-<time>); it must not hold any input or "
                             "earlier suggestions")
    parser.add_argument("--views", type=int, choices=[1, 2, 4], default=4,
                        help="views of each image per member: identity, mirrored, turned "
                             "by half, both (default: 4)")
    parser.add_argument("--similarity", type=float, default=0.9,
                        help="images whose thumbnails correlate at least this much with one "
                             "ranked before are ranked after every distinct image "
                             "(default: 0.9; 1 turns it off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_logging_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Rank the images and write the CSV and the contact sheet; the exit status (2: bad
    options or no usable input, 1: some inputs skipped)."""
    parser = build_parser(prog)
    arguments = parser.parse_args(argv)
    setup_logging(arguments)
    if arguments.count < 1:
        parser.error(f"--count {arguments.count}: must be at least 1")
    if not 0 < arguments.similarity <= 1:
        parser.error(f"--similarity {arguments.similarity}: must be in (0, 1]")
    output = arguments.output or Path(time.strftime("suggestions-%Y%m%d-%H%M%S"))
    import_tensorflow(arguments)
    from unet_cbam.inputs import check_output_folder, input_root, list_inputs
    from unet_cbam.loading import load_run
    from unet_cbam.suggest import CSV_NAME, SHEET_NAME, suggest

    try:
        files = list_inputs(arguments.images, output)
        if not files:
            raise FileNotFoundError(f"{arguments.images}: no images found")
        earlier = [output / name for name in (CSV_NAME, SHEET_NAME) if (output / name).exists()]
        if earlier:
            raise ValueError(f"{earlier[0]}: exists; choose another --output (earlier "
                             "suggestions are never overwritten)")
        check_output_folder(output, files)
        run = load_run(arguments.model)
    except (ValueError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    ranked = suggest(run, files, output, arguments.count, root=input_root(arguments.images),
                     views=arguments.views, similarity=arguments.similarity,
                     progress=not arguments.quiet)
    good = [item for item in ranked if item.error is None]
    skipped = len(ranked) - len(good)
    print(f"{min(arguments.count, len(good))} of {len(good)} image(s) chosen"
          f"{f'; {skipped} skipped (bad files, see the CSV)' if skipped else ''}\n"
          f"  ranking:       {output / CSV_NAME}\n"
          f"  contact sheet: {output / SHEET_NAME}")
    if not good:
        return 2
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
