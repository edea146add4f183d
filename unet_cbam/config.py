"""Typed configuration: one dataclass tree, saved with every run as YAML.

Every field carries its help text in ``metadata["help"]``; the command-line
tools build their options from it, so a field is described once. Values read
from YAML are checked against the field types, and each dataclass checks its
own ranges in ``__post_init__``; errors name the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

ENCODER_UNET = "unet"
AttentionKind = Literal["none", "channel", "spatial", "cbam"]
CbamVariant = Literal["paper", "blog"]
Upsampling = Literal["transpose", "bilinear", "nearest"]


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (lists need ``default_factory``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help},
                     **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    """Everything `build_unet` needs; the model rebuilds exactly from it."""

    encoder: str = option(
        ENCODER_UNET,
        "encoder: 'unet' (the classic UNet encoder, trained from scratch) or a backbone name "
        "such as resnet34, efficientnetb0, mobilenetv2, vgg16 (see unet_cbam.models.BACKBONES)")
    encoder_weights: str | None = option(
        None,
        "backbone weights: none (random), 'imagenet' (downloads once; needs internet) or the path "
        "of a local weights file (.weights.h5 or a legacy .h5)")
    encoder_freeze: bool = option(False, "keep the backbone's weights fixed during training")
    depth: int | None = option(
        None,
        "number of downsampling stages; the input size must be divisible by 2**depth. "
        "Default: 4 for the plain UNet, 5 (the whole backbone) for backbones; 1-5 for backbones")
    base_filters: int = option(
        16,
        "filters of the stage at full resolution; stage l has base_filters * 2**l. Sets the "
        "plain encoder and every decoder stage")
    num_classes: int = option(
        1, "1: binary segmentation (sigmoid head); N > 1: N classes (softmax head)")
    input_channels: int = option(
        3, "channels the model takes; images are converted to this (1 gray, 3 RGB, ...)")
    input_size: list[int] | None = option(
        None, "fixed [height, width] of the input, or none for any size divisible by 2**depth")
    attention: AttentionKind = option(
        "cbam", "attention on each skip connection: none, channel, spatial or cbam")
    cbam_variant: CbamVariant = option(
        "paper",
        "'paper' (Woo et al. 2018) or 'blog' (the original Keras snippet, whose channel "
        "gates never fall below 0.5; for comparison only)")
    reduction_ratio: int = option(8, "channel attention MLP width: channels // reduction_ratio")
    spatial_kernel_size: int = option(7, "side of the spatial attention convolution (odd)")
    batch_norm: bool = option(True, "batch normalisation after each convolution")
    dropout: float = option(0.0, "dropout rate before the decoder (0 disables it)")
    upsampling: Upsampling = option(
        "transpose", "decoder upsampling: 'transpose' (learned 2x2), 'bilinear' or 'nearest'")

    def __post_init__(self) -> None:
        _require(self.num_classes >= 1, "num_classes", self.num_classes, "must be >= 1")
        _require(self.input_channels >= 1, "input_channels", self.input_channels,
                 "must be >= 1")
        _require(self.base_filters >= 1, "base_filters", self.base_filters, "must be >= 1")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        _require(self.reduction_ratio >= 1, "reduction_ratio", self.reduction_ratio,
                 "must be >= 1")
        _require(self.spatial_kernel_size >= 1 and self.spatial_kernel_size % 2 == 1,
                 "spatial_kernel_size", self.spatial_kernel_size, "must be a positive odd number")
        max_depth = 8 if self.is_plain_unet else 5
        _require(self.depth is None or 1 <= self.depth <= max_depth, "depth", self.depth,
                 f"must be between 1 and {max_depth} for encoder {self.encoder!r}")
        if self.input_size is not None:
            _require(len(self.input_size) == 2, "input_size", self.input_size,
                     "must be [height, width]")
            self.input_size = [int(v) for v in self.input_size]
            divisor = self.divisor
            for side in self.input_size:
                if side % divisor:
                    raise ValueError(
                        f"input_size {self.input_size} is not divisible by {divisor} "
                        f"(2**depth with depth {self.resolved_depth}); use a multiple of "
                        f"{divisor}, or none to accept any divisible size")
        if self.encoder_weights in ("none", "None", ""):
            self.encoder_weights = None
        if self.is_plain_unet and self.encoder_weights is not None:
            raise ValueError(
                f"encoder_weights {self.encoder_weights!r} needs a backbone encoder; "
                "the plain 'unet' encoder is always trained from scratch")
        if self.encoder_weights == "imagenet" and self.input_channels != 3:
            raise ValueError(
                f"encoder_weights 'imagenet' needs input_channels 3, got {self.input_channels}; "
                "grayscale images are converted to 3 channels when input_channels is 3")

    @property
    def is_plain_unet(self) -> bool:
        return self.encoder == ENCODER_UNET

    @property
    def resolved_depth(self) -> int:
        if self.depth is not None:
            return self.depth
        return 4 if self.is_plain_unet else 5

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.resolved_depth


def _require(condition: bool, name: str, value: Any, problem: str) -> None:
    if not condition:
        raise ValueError(f"{name} {value!r} {problem}")


# --------------------------------------------------------------------------
# dict / YAML conversion with type checks
# --------------------------------------------------------------------------

def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build config dataclass ``cls`` from a dict, checking names and types."""
    data = {} if data is None else data
    label = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{label}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{label}: unknown field(s) {', '.join(unknown)}; "
                         f"known fields: {', '.join(names)}")
    values = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = from_dict(kind, value, path)
        else:
            values[name] = check_type(value, kind, path)
    try:
        return cls(**values)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None


def check_type(value: Any, kind: Any, name: str) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(value, arg, name)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else
                         f"{name}: {value!r} does not match {_type_name(kind)}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [check_type(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {value!r}")
        return value
    if kind is Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{name}: unsupported config type {kind!r}")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind)).replace("typing.", "")


def save_yaml(config: Any, path: str | Path) -> None:
    """Write a config dataclass to YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a config dataclass from a YAML file, naming the file in errors."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    try:
        return from_dict(cls, data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
