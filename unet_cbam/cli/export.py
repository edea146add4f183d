"""unet-cbam-export: a trained run as SavedModel, ONNX, TFLite or OpenVINO, with
preprocessing.json.

    unet-cbam-export RUN_DIR --format savedmodel|onnx|tflite|openvino [--output PATH]
        [--input-size H W]
    python -m unet_cbam.export RUN_DIR --format onnx

The export runs without unet_cbam (TF Serving, onnxruntime, TFLite/LiteRT, OpenVINO);
preprocessing.json says what predict.py does around the model. Export
finishes only if the exported model matches Keras to 1e-4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unet_cbam.cli.options import add_logging_options, import_tensorflow, setup_logging

FORMAT_NAMES = ("savedmodel", "onnx", "tflite", "openvino")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options; ``prog`` names the command in help and errors (default: as invoked)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, metavar="RUN_DIR", help="a run folder from train.py")
    parser.add_argument("--format", required=True, choices=FORMAT_NAMES,
                        help="savedmodel (TF Serving), onnx (onnxruntime and others; needs "
                             "the export extra: pip install 'unet_cbam[export]'), tflite, or "
                             "openvino (IR: model.xml and model.bin; needs the openvino "
                             "extra too)")
    parser.add_argument("--output", type=Path, metavar="PATH",
                        help="the exported file (onnx, tflite, openvino's .xml) or folder "
                             "(savedmodel); default: RUN_DIR/export/savedmodel, "
                             ".../onnx/model.onnx, .../tflite/model.tflite, "
                             ".../openvino/model.xml")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="a fixed input size, multiples of the model's divisor (default: "
                             "any size)")
    add_logging_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Export ``RUN`` in ``--format``; the exit status (2: bad arguments)."""
    parser = build_parser(prog)
    arguments = parser.parse_args(argv)
    setup_logging(arguments)
    import_tensorflow(arguments)
    from unet_cbam.export import PREPROCESSING_FILE, export_run

    try:
        output = export_run(arguments.run, arguments.format, arguments.output,
                            arguments.input_size)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    spec = (output if arguments.format == "savedmodel" else output.parent) / PREPROCESSING_FILE
    print(f"exported: {output}\npreprocessing: {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
