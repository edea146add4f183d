"""unet-cbam: one entry point for every command.

    unet-cbam train|predict|evaluate|fingerprint|export|suggest [OPTIONS]
    python -m unet_cbam train|predict|evaluate|fingerprint|export|suggest [OPTIONS]

Each command is the same as its own script (``train.py``, ``predict.py``,
``unet-cbam-evaluate`` ...): ``unet-cbam COMMAND --help`` lists its options.
"""

from __future__ import annotations

import importlib
import sys

from unet_cbam.cli.options import exit_at_once

#: command -> (module, what it does)
COMMANDS = {
    "train": ("unet_cbam.cli.train", "train a model on a folder of images and masks"),
    "predict": ("unet_cbam.cli.predict", "masks for folders of images of any size"),
    "evaluate": ("unet_cbam.cli.evaluate", "score predicted masks against ground truth"),
    "fingerprint": ("unet_cbam.cli.fingerprint",
                    "what train.py would plan for a data folder, without training"),
    "export": ("unet_cbam.cli.export", "a run as SavedModel, ONNX, TFLite or OpenVINO"),
    "suggest": ("unet_cbam.cli.suggest", "which unlabelled images to label next"),
}
PROG = "unet-cbam"


def usage() -> str:
    """The list of commands, as ``--help`` prints it."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} [OPTIONS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", f"'{PROG} COMMAND --help' lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``argv[0]``'s command with the rest of ``argv``; its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{usage()}\n\n{PROG}: error: unknown command {command!r}; choose one of "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest, prog=f"{PROG} {command}")


def entry() -> None:
    """The console script. Training ends without the interpreter's teardown, as
    ``train.py`` does (``exit_at_once``)."""
    code = main()
    if sys.argv[1:2] == ["train"]:
        exit_at_once(code)
    sys.exit(code)
