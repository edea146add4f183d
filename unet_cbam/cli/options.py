"""Command-line options generated from the config dataclasses.

Every field becomes ``--field-name`` with its help text from the dataclass,
so the config and the command line cannot drift apart. Values are parsed as
YAML scalars or lists (``none``, ``true``, ``0.5``, ``[[0, 0, 0], [255, 0, 0]]``)
and then type-checked like a config file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from unet_cbam.config import from_dict, to_dict

SECTION_SEPARATOR = "."


def add_config_options(parser: argparse.ArgumentParser, sections: dict[str, type]) -> None:
    """Add ``--name`` for every field of every section (dest ``section.name``)."""
    seen: dict[str, str] = {}
    for section, cls in sections.items():
        group = parser.add_argument_group(f"{section} options ({cls.__name__})")
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[field.name]):
                continue
            flag = "--" + field.name.replace("_", "-")
            if flag in seen:
                raise ValueError(f"{flag} is defined by both {seen[flag]} and {section}")
            seen[flag] = section
            default = (field.default if field.default is not dataclasses.MISSING
                       else field.default_factory())
            kind = hints[field.name]
            help_text = field.metadata.get("help", "").replace("%", "%%")
            help_text += f" (default: {_show(default)})"
            dest = f"{section}{SECTION_SEPARATOR}{field.name}"
            if kind is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
                continue
            inner = _strip_optional(kind)
            keywords = _list_keywords(inner)
            if typing.get_origin(inner) is list and _is_scalar(typing.get_args(inner)[0]):
                group.add_argument(flag, dest=dest, nargs="+", metavar="V",
                                   type=_converter(typing.get_args(inner)[0]),
                                   default=argparse.SUPPRESS, help=help_text)
            elif keywords is not None:  # a list, or one keyword: --attention-levels 1 2 3|all
                item, words = keywords
                group.add_argument(flag, dest=dest, nargs="+", metavar="V",
                                   type=_converter(item), action=_ListOrKeyword,
                                   keywords=words, default=argparse.SUPPRESS, help=help_text)
            else:
                choices = _choices(kind)
                group.add_argument(flag, dest=dest, type=_converter(kind),
                                   metavar=_metavar(kind), default=argparse.SUPPRESS,
                                   choices=choices, help=help_text)


def apply_options(base: Any, arguments: argparse.Namespace) -> Any:
    """A copy of config ``base`` with the options that were given on the command line."""
    data = to_dict(base)
    for dest, value in vars(arguments).items():
        if SECTION_SEPARATOR not in dest:
            continue
        section, name = dest.split(SECTION_SEPARATOR, 1)
        if isinstance(value, list) and value == ["none"]:
            value = None
        data[section][name] = value
    return from_dict(type(base), data)


def _list_keywords(kind: Any) -> tuple[Any, tuple[str, ...]] | None:
    """For ``list[scalar] | Literal[...]``: (the item type, the keywords); else None."""
    if typing.get_origin(kind) not in (typing.Union, types.UnionType):
        return None
    lists = [a for a in typing.get_args(kind) if typing.get_origin(a) is list]
    literals = [a for a in typing.get_args(kind) if typing.get_origin(a) is Literal]
    if len(lists) != 1 or not _is_scalar(typing.get_args(lists[0])[0]) or not literals:
        return None
    return typing.get_args(lists[0])[0], tuple(w for a in literals for w in typing.get_args(a))


class _ListOrKeyword(argparse.Action):
    """Store a one-word keyword as itself, anything else as the list it is."""

    def __init__(self, *args: Any, keywords: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.keywords = keywords
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if len(values) == 1 and values[0] in self.keywords:
            values = values[0]
        setattr(namespace, self.dest, values)


def _converter(kind: Any):
    """Text -> value: strings stay strings ("none" is None), the rest is parsed."""
    optional = type(None) in typing.get_args(kind)
    inner = _strip_optional(kind)
    if inner is str or typing.get_origin(inner) is Literal:
        return lambda text: None if optional and text.lower() == "none" else text
    return _yaml_value


def _yaml_value(text: str) -> Any:
    for number in (int, float):  # YAML 1.1 reads "1e-4" as a string
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _strip_optional(kind: Any) -> Any:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return kind


def _choices(kind: Any) -> list[Any] | None:
    """The values of a Literal (with None for an optional one), else None."""
    inner = _strip_optional(kind)
    if typing.get_origin(inner) is not Literal:
        return None
    values = list(typing.get_args(inner))
    return values + [None] if inner is not kind else values


def _is_scalar(kind: Any) -> bool:
    return kind in (int, float, str)


def _metavar(kind: Any) -> str:
    choices = _choices(kind)
    if choices is not None:
        return "{" + ",".join(_show(choice) for choice in choices) + "}"
    kind = _strip_optional(kind)
    return {int: "N", float: "X", str: "TEXT"}.get(kind, "YAML")


def _show(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else \
        str(value)


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` and ``--log-file``, read by ``setup_logging``."""
    parser.add_argument("--verbose", action="store_true", help="debug messages too")
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="also append the log messages to FILE")


def setup_logging(arguments: argparse.Namespace) -> None:
    """Console logging for the CLIs, and a file if ``--log-file`` was given."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if arguments.log_file is not None:
        arguments.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(arguments.log_file))
    logging.basicConfig(level=logging.DEBUG if arguments.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def import_tensorflow(arguments: argparse.Namespace) -> None:
    """Import TensorFlow and find its devices without the native start-up lines.

    TF_CPP_MIN_LOG_LEVEL (set by the package) hides TensorFlow's own INFO and
    WARNING lines, but the lines absl writes before its logging is set up
    ("All log messages before absl::InitializeLog() ...", "Could not find cuda
    drivers ...") and the ERROR a machine without a GPU logs when devices are
    first listed ("failed call to cuInit") ignore it. They go to file
    descriptor 2, which points to /dev/null for the import and the device
    listing only (not with ``--verbose``); a failing import still raises, with
    its traceback, after it is restored. The devices found are logged.
    """
    def load():
        tensorflow = importlib.import_module("tensorflow")
        return tensorflow, tensorflow.config.list_physical_devices("GPU")

    if arguments.verbose:
        tensorflow, gpus = load()
    else:
        with _native_stderr_silenced():
            tensorflow, gpus = load()
    logging.getLogger("unet_cbam").debug("TensorFlow %s, %d GPU(s)", tensorflow.__version__,
                                         len(gpus))


@contextlib.contextmanager
def _native_stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def exit_at_once(code: int) -> None:
    """End the process with ``code`` once its streams are flushed, without the interpreter's
    teardown.

    Tearing down tf.data's iterators at interpreter exit can block forever (seen after
    errors inside model.fit and after resumed runs). Every file of a run is complete and
    closed when training's ``main`` returns (written atomically; TensorBoard's writers close
    at the end of training), so nothing is lost.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
