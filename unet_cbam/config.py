"""Typed configuration: one dataclass tree, saved with every run as YAML.

Every field carries its help text in ``metadata["help"]``; the command-line
tools build their options from it, so a field is described once. Values read
from YAML are checked against the field types, and each dataclass checks its
own ranges in ``__post_init__``; errors name the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from unet_cbam.data.normalization import Normalization
from unet_cbam.files import write_text

T = TypeVar("T")

ENCODER_UNET = "unet"
#: Channel attention MLP width is channels // this; the layers' default too.
DEFAULT_REDUCTION_RATIO = 8
#: Largest image decoded (height x width), checked from the file header: OpenCV's limit.
DEFAULT_MAX_PIXELS = 2**30
AttentionKind = Literal["none", "channel", "spatial", "cbam"]
CbamVariant = Literal["paper", "blog"]
Upsampling = Literal["transpose", "bilinear", "nearest"]
AttentionPosition = Literal["skip", "decoder", "encoder"]
AttentionLevels = Literal["all", "downsampled"]


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
    num_classes: int | Literal["auto"] = option(
        "auto",
        "1: binary segmentation (sigmoid head); N > 1: N classes (softmax head); auto: read "
        "from the masks when training (two values, JPEG masks or instance labels: 1; class "
        "ids, colours or palette indices: their count), recorded in the plan")
    input_channels: int = option(
        3, "channels the model takes; images are converted to this (1 gray, 3 RGB, ...)")
    input_size: list[int] | None = option(
        None, "fixed [height, width] of the input, or none for any size divisible by 2**depth")
    attention: AttentionKind = option(
        "cbam", "attention on each skip connection: none, channel, spatial or cbam")
    attention_levels: list[int] | AttentionLevels | None = option(
        "downsampled",
        "levels (stride 2**level) that get attention: a list such as [2, 3]; 'all': every "
        "level the position has (skip and encoder: 0..depth-1 for the plain encoder, "
        "1..depth-1 for a backbone; decoder: 0..depth-1); 'downsampled': those but the "
        "full-resolution level 0, which costs as much as all the others and did not help "
        "(the default since 2026-12-03). none, and runs written before then, read as 'all'")
    attention_position: AttentionPosition = option(
        "skip",
        "where attention sits: skip (on the skip connections), decoder (after each decoder "
        "stage's convolutions) or encoder (after each encoder stage, before it is passed on "
        "and skipped, as Woo et al. place CBAM in a block)")
    attention_identity: bool = option(
        True,
        "add each attended tensor's input back (x + attention(x)): an identity path beside "
        "the gates, as Woo et al.'s CBAM sits on a ResNet block's residual branch. Without "
        "it (--no-attention-identity, the paper's maths on a skip), fresh gates (0.5 x 0.5) "
        "pass a quarter of the skip. Runs written before it was the default read as false")
    cbam_variant: CbamVariant = option(
        "paper",
        "'paper' (Woo et al. 2018) or 'blog' (the original Keras snippet, whose channel "
        "gates never fall below 0.5; for comparison only)")
    reduction_ratio: int = option(
        DEFAULT_REDUCTION_RATIO, "channel attention MLP width: channels // reduction_ratio")
    spatial_kernel_size: int = option(7, "side of the spatial attention convolution (odd)")
    batch_norm: bool = option(True, "batch normalisation after each convolution")
    dropout: float = option(0.0, "dropout rate before the decoder (0 disables it)")
    upsampling: Upsampling = option(
        "transpose", "decoder upsampling: 'transpose' (learned 2x2), 'bilinear' or 'nearest'")

    def __post_init__(self) -> None:
        _check_choices(self)
        _require(self.num_classes == "auto" or self.num_classes >= 1, "num_classes",
                 self.num_classes, "must be >= 1 or auto")
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
        if self.attention_levels is None:  # run folders written before the keywords
            self.attention_levels = "all"
        if isinstance(self.attention_levels, list):
            levels = self.attention_levels_available
            unknown = [lv for lv in self.attention_levels if lv not in levels]
            _require(not unknown and len(set(self.attention_levels)) == len(self.attention_levels),
                     "attention_levels", self.attention_levels,
                     f"must be distinct levels of {levels} (attention_position "
                     f"{self.attention_position!r}, depth {self.resolved_depth}, encoder "
                     f"{self.encoder!r})")
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
    def attention_levels_available(self) -> list[int]:
        """The levels ``attention_position`` offers: skips and encoder stages (1.. for a
        backbone, whose first skip has stride 2), decoder stages (0..depth-1)."""
        first = 0 if self.is_plain_unet or self.attention_position == "decoder" else 1
        return list(range(first, self.resolved_depth))

    @property
    def attended_levels(self) -> list[int]:
        """The levels that get attention (none for attention 'none')."""
        if self.attention == "none":
            return []
        available = self.attention_levels_available
        if self.attention_levels in (None, "all"):
            return available
        if self.attention_levels == "downsampled":
            return [level for level in available if level > 0]
        return sorted(self.attention_levels)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.resolved_depth

    @property
    def classes(self) -> int:
        """``num_classes``, which must be decided (training decides ``auto`` from the
        masks)."""
        if self.num_classes == "auto":
            raise ValueError("num_classes 'auto' is decided from the masks when training; give "
                             "a number (1 for binary) to build a model without data")
        return self.num_classes


MaskEncoding = Literal["auto", "binary", "indexed", "palette", "rgb"]
NormalizeMode = Literal["auto", "bitdepth", "percentile", "zscore"]
AugmentationPreset = Literal["none", "light", "default", "heavy"]


@dataclass
class DataConfig:
    """Where the data is, how masks are encoded, and how patches are sampled."""

    data: str | None = option(
        None,
        "data folder holding images/ and masks/ (paired by file stem); "
        "none: the built-in demo data, generated into data/demo on first use")
    images: str | None = option(None, "image folder (instead of --data)")
    masks: str | None = option(None, "mask folder (instead of --data)")
    val_data: str | None = option(
        None, "separate validation folder with images/ and masks/ (else --val-fraction)")
    val_fraction: float = option(
        0.2, "fraction of the pairs held out for validation (deterministic for a seed)")
    mask_encoding: MaskEncoding = option(
        "auto",
        "auto (detected from the masks and saved with the run), binary, indexed (class id "
        "per pixel), palette (PNG palette indices) or rgb (colours, see class_colors)")
    binary_threshold: int | Literal["auto"] = option(
        "auto",
        "binary masks: foreground is any value above this. auto: from the mask histogram "
        "(clean masks such as 0/1, 0/255 or instance labels: above the background value; "
        "JPEG masks or two noisy modes: the middle between the modes)")
    class_colors: list[list[int]] | None = option(
        None, "rgb masks: [r, g, b] of each class, in class order; none: the colours found "
        "in the masks, in ascending R:G:B order (recorded in the plan)")
    ignore_value: int | None = option(
        None, "mask value excluded from loss and metrics (binary, indexed, palette masks)")
    ignore_color: list[int] | None = option(
        None, "rgb masks: [r, g, b] excluded from loss and metrics")
    ignore_edges: bool = option(
        False,
        "rgb masks: pixels of a colour that is no class, found only on the edges between "
        "classes (antialiasing, resampling), are left out of the loss and the scores instead "
        "of refused; set by the plan when the masks have such colours")
    class_names: list[str] | None = option(
        None, "a name per class, used in logs and reports (binary: [background, foreground])")
    mask_values: list[int] | None = option(
        None,
        "binary masks: the [background, foreground] values written by predict "
        "(detected from the training masks when none)")
    palette: list[list[int]] | None = option(
        None, "palette masks: the RGB palette written by predict (read from the masks)")
    patch_size: int | None = option(
        None,
        "side of the square training patches, in pixels; none: planned from the median image "
        "size (see unet_cbam.plan)")
    scale: float | None = option(
        None,
        "resample images and masks by this factor (at most 1) for training; predict.py "
        "resamples each image the same way and its probabilities back to the image's size. "
        "none: planned (1 without --time-budget; with one, lower when the budget affords too "
        "few passes over the data at full resolution and the structures stay wide enough, see "
        "unet_cbam.plan)")
    normalize: NormalizeMode = option(
        "auto",
        "intensity normalisation: bitdepth (divide by 255 or 65535), percentile (clip to the "
        "data's 0.5-99.5th percentiles, scale to [0, 1]), zscore (clip, then subtract the mean "
        "and divide by the standard deviation) or auto (percentile for float data and for data "
        "that uses a small part of its bit depth's range, else bitdepth)")
    normalization: Normalization | None = option(
        None,
        "the frozen statistics of the normalisation (mode, low, high, mean, std), decided by "
        "the plan and applied by training and predict.py; none: planned (runs written "
        "before it was saved: bitdepth)")
    foreground_oversampling: float | None = option(
        None,
        "probability that a training patch is centred on foreground (0 disables); none: "
        "planned from the class frequencies (1/3, or 1/2 for a class under 1% of the pixels)")
    class_sampling: dict[str, float] | None = option(
        None,
        "which foreground class a patch centred on foreground is centred on: a weight per "
        "class name, e.g. '{window: 1, door: 4}' (a class left out is never drawn); none: "
        "planned (each class in proportion to 1/sqrt of its share of the pixels, so rare "
        "classes are seen more often)")
    unlabeled: str | None = option(
        None,
        "a folder of images without masks to learn from as well (semi-supervised: "
        "consistency between a weak and a strong view of each, see "
        "unet_cbam.semisupervised); checked and normalised as the labelled images")
    augmentation: AugmentationPreset = option(
        "default", "augmentation preset: none, light, default or heavy")
    augmentations: list[dict[str, Any]] | None = option(
        None,
        "your own albumentations pipeline, replacing the preset: a list of "
        "{TransformName: {argument: value}}, in a config file or as YAML on the command line, "
        "e.g. '[{HorizontalFlip: {p: 0.5}}]'")
    cache_gb: float = option(
        4.0, "keep decoded images in memory when they take less than this many GB")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "images or masks whose header declares more pixels (height x width) are reported, "
        "not decoded")

    def __post_init__(self) -> None:
        _check_choices(self)
        _require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction,
                 "must be in [0, 1)")
        _require(self.foreground_oversampling is None
                 or 0.0 <= self.foreground_oversampling <= 1.0, "foreground_oversampling",
                 self.foreground_oversampling, "must be in [0, 1]")
        _require(self.class_sampling is None or (
            isinstance(self.class_sampling, dict) and self.class_sampling
            and all(isinstance(w, (int, float)) and w >= 0
                    for w in self.class_sampling.values())
            and sum(self.class_sampling.values()) > 0), "class_sampling", self.class_sampling,
            "must map class names to weights >= 0, at least one of them above 0")
        _require(self.scale is None or 0 < self.scale <= 1, "scale", self.scale,
                 "must be in (0, 1]")
        _require(self.patch_size is None or self.patch_size >= 8, "patch_size",
                 self.patch_size, "must be >= 8")
        _require(self.binary_threshold == "auto" or self.binary_threshold >= 0,
                 "binary_threshold", self.binary_threshold, "must be >= 0 or auto")
        _require(self.cache_gb >= 0, "cache_gb", self.cache_gb, "must be >= 0")
        _require(1 <= self.max_pixels <= DEFAULT_MAX_PIXELS, "max_pixels", self.max_pixels,
                 f"must be between 1 and {DEFAULT_MAX_PIXELS} (OpenCV's limit)")
        for name in ("class_colors", "palette"):
            colors = getattr(self, name)
            _require(colors is None or all(len(c) == 3 for c in colors), name, colors,
                     "must be a list of [r, g, b]")
        _require(self.ignore_color is None or len(self.ignore_color) == 3, "ignore_color",
                 self.ignore_color, "must be [r, g, b]")
        _require(self.mask_values is None or len(self.mask_values) == 2, "mask_values",
                 self.mask_values, "must be [background, foreground]")
        _require(self.data is None or (self.images is None and self.masks is None),
                 "data", self.data, "cannot be combined with images/masks")
        _require((self.images is None) == (self.masks is None), "images", self.images,
                 "and masks must be given together")
        if isinstance(self.normalization, dict):  # as a config file or older code has it
            self.normalization = Normalization.from_config(self.normalization)


Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["cosine", "constant", "plateau"]
Strategy = Literal["default", "mirrored", "multiworker"]
Precision = Literal["auto", "float32", "bfloat16", "float16"]
Runtime = Literal["keras", "onnxruntime", "openvino", "auto"]
InferencePrecision = Literal["auto", "float32", "bfloat16", "float16", "int8"]


@dataclass
class TrainConfig:
    """The optimisation: budget, optimiser, loss, schedule and hardware."""

    epochs: int = option(100, "number of epochs")
    steps_per_epoch: int | None = option(
        None, "training batches per epoch; none: about one pass over the training pixels")
    batch_size: int | None = option(
        None, "patches per batch (over all replicas); none: planned with the patch size")
    optimizer: Optimizer = option("adam", "adam, adamw or sgd (with Nesterov momentum 0.9)")
    learning_rate: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(1e-4, "adamw only: decoupled weight decay")
    lr_schedule: Schedule = option(
        "cosine", "cosine (decay to 1% after warm-up), constant, or plateau (x0.5 on stalls)")
    warmup_epochs: int = option(1, "epochs of linear learning-rate warm-up (cosine)")
    loss: str = option(
        "auto",
        "loss terms joined by '+': ce (bce), dice, jaccard, focal. auto: bce+dice for binary, "
        "ce+dice for several classes. Region terms average over every class, background too")
    class_weights: list[float] | None = option(
        None, "a weight per class for the loss (binary: [background, foreground])")
    monitor: str = option(
        "val_mean_dice",
        "validation metric that picks the best model, drives early stopping and the plateau "
        "schedule: val_loss (lower is better) or val_mean_dice, val_mean_iou, "
        "val_dice_<class>, val_iou_<class> (higher is better)")
    early_stopping_patience: int = option(
        30, "stop after this many epochs without improvement of the monitor (0: never)")
    precision: Precision = option(
        "auto",
        "float32, bfloat16 or float16 (mixed: the gates and the head stay float32); auto: by "
        "the hardware (float16 on GPUs with tensor cores, bfloat16 on CPUs with AVX512_BF16 "
        "or AMX, else float32; see unet_cbam.precision), recorded in the plan")
    mixed_precision: bool = option(
        False, "the former name of --precision float16 (kept as an alias)")
    strategy: Strategy = option(
        "default",
        "tf.distribute strategy: default (one device), mirrored (all local GPUs) or "
        "multiworker (several machines; the cluster from TF_CONFIG or a SLURM job step). "
        "batch_size is the global batch, split over the replicas")
    cluster_timeout: float | str = option(
        "10m", "multiworker: how long workers wait for each other to start, e.g. 90s, 10m "
        "(seconds once loaded); then a clear error instead of a hang")
    seed: int = option(42, "seed for the split, the patches, augmentation and weights")
    time_budget: float | str | None = option(
        None,
        "the whole command's time, e.g. 20m, 1h30m, 90s (seconds once loaded): planning, "
        "training, every validation pass, the final scoring, tuning and save. The step time "
        "and a validation pass are measured, the epochs and steps (given steps_per_epoch: the "
        "epochs) are planned to fill what is left after the final steps' share, then "
        "re-planned after each epoch from the run's own pace. none: epochs and "
        "steps_per_epoch as given")
    validation_steps: int | None = option(
        None,
        "validation batches scored after each epoch (the first ones, the same each epoch; the "
        "final scores and tuning use all); none: all, or with time_budget planned so that "
        "validation takes at most a fifth of an epoch's time")
    folds: int | None = option(
        None,
        "k-fold cross-validation: train k models (fold_0 ... fold_k-1 in the run folder), each "
        "validating on its own disjoint 1/k of the pairs; predict.py averages them. With "
        "time_budget, the budget covers all k folds and the ensemble's tuning. none: one "
        "model")
    fold: int | None = option(
        None, "with folds: train only this fold (0 ... folds-1), e.g. one per machine")
    unlabeled_ratio: int | None = option(
        None, "with unlabeled: unlabelled patches per labelled patch in a step; none: planned")
    unlabeled_weight: float | None = option(
        None, "with unlabeled: weight of the unlabelled (consistency) loss; none: planned")
    unlabeled_rampup: float | None = option(
        None,
        "with unlabeled: share of the planned steps over which the unlabelled loss's weight "
        "ramps up from 0; none: planned")
    confidence: float | None = option(
        None,
        "with unlabeled: pseudo-labels are kept where the weak view's probability is at "
        "least this; none: planned")
    tune_on: str | None = option(
        None,
        "two classes (binary): the class whose validation Dice chooses the threshold and the "
        "post-processing, e.g. background where the thin structure of interest is mask value "
        "0. none: planned, the rarer class in the fingerprint; with more classes each "
        "foreground class is judged on its own Dice")

    def __post_init__(self) -> None:
        _check_choices(self)
        _require(self.folds is None or self.folds >= 2, "folds", self.folds,
                 "must be >= 2 (or none for a single model)")
        if self.fold is not None:
            _require(self.folds is not None, "fold", self.fold, "needs folds (the fold count)")
            _require(0 <= self.fold < self.folds, "fold", self.fold,
                     f"must be between 0 and {(self.folds or 1) - 1} (folds {self.folds})")
        # Durations are parsed here, once: everything downstream reads seconds.
        if self.time_budget is not None:
            self.time_budget = parse_duration(self.time_budget, "time_budget")
        self.cluster_timeout = parse_duration(self.cluster_timeout, "cluster_timeout")
        _require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        _require(self.batch_size is None or self.batch_size >= 1, "batch_size",
                 self.batch_size, "must be >= 1")
        _require(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
                 self.steps_per_epoch, "must be >= 1")
        _require(self.validation_steps is None or self.validation_steps >= 1,
                 "validation_steps", self.validation_steps, "must be >= 1")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        _require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be >= 0")
        _require(self.early_stopping_patience >= 0, "early_stopping_patience",
                 self.early_stopping_patience, "must be >= 0")
        _require(self.monitor.startswith("val_"), "monitor", self.monitor,
                 "must be a validation metric (val_...)")
        _require(self.unlabeled_ratio is None or self.unlabeled_ratio >= 1, "unlabeled_ratio",
                 self.unlabeled_ratio, "must be >= 1")
        _require(self.unlabeled_weight is None or self.unlabeled_weight >= 0,
                 "unlabeled_weight", self.unlabeled_weight, "must be >= 0")
        _require(self.unlabeled_rampup is None or 0 <= self.unlabeled_rampup <= 1,
                 "unlabeled_rampup", self.unlabeled_rampup, "must be in [0, 1]")
        _require(self.confidence is None or 0.5 <= self.confidence <= 1, "confidence",
                 self.confidence, "must be in [0.5, 1]")

    @property
    def monitor_mode(self) -> Literal["min", "max"]:
        return monitor_mode(self.monitor)


_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*([hms])")


def parse_duration(text: str | float, name: str = "duration") -> float:
    """Seconds in ``90``, ``90s``, ``20m``, ``1.5h`` or ``1h30m`` (or a number of seconds);
    an error names the value."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"{name} {text!r} must be longer than 0 seconds")
        return float(text)
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d*)?", value):
        seconds = float(value)
    elif value and re.fullmatch(rf"(?:{_DURATION.pattern}\s*)+", value):
        factor = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(number) * factor[unit] for number, unit in _DURATION.findall(value))
    else:
        raise ValueError(f"{name} {text!r} is not a duration such as 90s, 20m, 1.5h or 1h30m")
    if seconds <= 0:
        raise ValueError(f"{name} {text!r} must be longer than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """``1200`` -> ``20m``, ``5400`` -> ``1h30m``, ``2.5`` -> ``2.5s``: what ``parse_duration``
    reads back to the same seconds."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"),
                                                        (secs, "s")) if value)
    return text or "0s"


def monitor_mode(metric: str) -> Literal["min", "max"]:
    """Whether ``metric`` improves downwards (losses) or upwards (scores)."""
    return "min" if metric.endswith("loss") else "max"


#: Binary models: foreground where the probability is above this, unless a run's validation
#: chose another threshold (``TunedInference``) or one is given.
DEFAULT_THRESHOLD = 0.5


@dataclass
class TunedInference:
    """A run's ``inference`` section: the threshold and per-class post-processing chosen on
    its validation images (``unet_cbam.postprocess.tune``), with the Dice that chose them.

    ``classes``: ``{class name: {min_size, largest_only, fill_holes, validation_dice:
    [before, after]}}``; ``threshold`` and ``threshold_dice`` (at 0.5 and at the chosen
    threshold) for binary models only.
    """

    validation_images: int = 0
    confidence: float | None = None  # the rule's (runs tuned before it had one: none)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuned_on: str | None = None
    threshold: float | None = None
    threshold_dice: dict[str, float] | None = None

    @classmethod
    def from_config(cls, value: dict[str, Any]) -> TunedInference:
        return from_dict(cls, value, "inference")

    def to_config(self) -> dict[str, Any]:
        """The section as saved: what is set, in this order."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)
                if getattr(self, item.name) is not None}

    @property
    def has_postprocessing(self) -> bool:
        return any(steps.get(key) for steps in self.classes.values()
                   for key in ("min_size", "largest_only", "fill_holes"))


@dataclass
class InferenceConfig:
    """How predict.py turns a model into masks."""

    tile_size: int = option(
        512, "side of the sliding-window tiles in pixels (rounded up to the model's divisor)")
    overlap: float = option(0.25, "overlap of neighbouring tiles, as a fraction of the tile")
    batch_size: int = option(4, "tiles per forward pass")
    tta: bool = option(
        False, "test-time augmentation: average the 8 flips/90-degree rotations (8x slower)")
    threshold: float | None = option(
        None,
        "binary models: foreground where probability > threshold; none: the run's threshold "
        "tuned on validation (its inference section), else 0.5")
    precision: InferencePrecision = option(
        "auto",
        "float32, bfloat16 or float16 for the forward passes; auto: by the hardware, as for "
        "training (a model trained in another precision is rebuilt in this one); int8: "
        "runtime openvino, the model quantised by NNCF on the run's training images and used "
        "only where its validation Dice drops by at most 0.003 (else float32), cached in the "
        "run folder")
    runtime: Runtime = option(
        "keras",
        "what runs the model: keras, onnxruntime (the model converted to ONNX when "
        "predict.py starts; needs the export extra, float32 only) or openvino (converted to "
        "OpenVINO through ONNX; needs the openvino extra; float32 or bfloat16, on the CPU); "
        "auto: the fastest of those installed that run the precision, timed on this "
        "machine on first use and cached; with --precision auto, also the run's INT8 "
        "model where it passed its check")
    postprocess: bool = option(
        True,
        "apply the run's post-processing and threshold chosen on validation (its inference "
        "section); --no-postprocess: plain argmax / threshold 0.5")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "images whose header declares more pixels (height x width) are reported and skipped, "
        "not decoded")

    def __post_init__(self) -> None:
        _check_choices(self)
        _require(self.tile_size >= 1, "tile_size", self.tile_size, "must be >= 1")
        _require(0.0 <= self.overlap < 1.0, "overlap", self.overlap, "must be in [0, 1)")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _require(self.threshold is None or 0.0 < self.threshold < 1.0, "threshold",
                 self.threshold, "must be in (0, 1)")
        _require(1 <= self.max_pixels <= DEFAULT_MAX_PIXELS, "max_pixels", self.max_pixels,
                 f"must be between 1 and {DEFAULT_MAX_PIXELS} (OpenCV's limit)")

    def resolve_threshold(self, tuned: TunedInference | None) -> float:
        """The threshold applied: the one given, else the run's, chosen on validation
        (unless ``postprocess`` is off), else ``DEFAULT_THRESHOLD``."""
        if self.threshold is not None:
            return self.threshold
        if self.postprocess and tuned is not None and tuned.threshold is not None:
            return tuned.threshold
        return DEFAULT_THRESHOLD

    def postprocessing(self, tuned: TunedInference | None) -> TunedInference | None:
        """The run's post-processing to apply: none when ``postprocess`` is off or the run
        chose no step."""
        return tuned if self.postprocess and tuned is not None and tuned.has_postprocessing \
            else None


@dataclass
class RunConfig:
    """A training run: saved as config.yaml in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: What the automatic configuration decided, and why: {setting: {value, reason}}.
    plan: dict[str, Any] | None = None
    #: Threshold and post-processing chosen on validation (``unet_cbam.postprocess``).
    inference: TunedInference | None = None

    def __post_init__(self) -> None:
        if isinstance(self.inference, dict):  # as a run's config file has it
            self.inference = TunedInference.from_config(self.inference)


def _check_choices(config: Any) -> None:
    """Every field whose type is (or holds) a ``Literal`` gets one of its values: the
    Python API is checked like a config file or the command line, whoever builds it."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        kind = hints[item.name]
        kinds = typing.get_args(kind) if typing.get_origin(kind) in (
            typing.Union, types.UnionType) else (kind,)
        if any(typing.get_origin(k) is Literal for k in kinds):
            setattr(config, item.name, check_type(getattr(config, item.name), kind, item.name))


def _require(condition: bool, name: str, value: Any, problem: str) -> None:
    if not condition:
        raise ValueError(f"{name} {value!r} {problem}")


# --------------------------------------------------------------------------
# dict / YAML conversion with type checks
# --------------------------------------------------------------------------

def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists; a value with
    ``to_config``, such as ``Normalization``, is written as that)."""
    return _plain(config)


def _plain(value: Any) -> Any:
    if hasattr(value, "to_config"):
        return _plain(value.to_config())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _plain(getattr(value, item.name))
                for item in dataclasses.fields(value)}
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
    if isinstance(kind, type) and hasattr(kind, "from_config"):  # e.g. Normalization
        if isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {value!r}")
        try:
            return kind.from_config(value)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
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
    """``list[int] | Literal['all', 'x'] | None`` -> "a list of int, 'all', 'x' or none"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(arg) for arg in args if arg is not type(None)]
        if type(None) in args:
            names.append("none")
        return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    if origin is Literal:
        return ", ".join(map(repr, args))
    if origin in (list, tuple):
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return getattr(kind, "__name__", str(kind)).replace("typing.", "")


def save_yaml(config: Any, path: str | Path) -> None:
    """Write a config dataclass to YAML, atomically."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


#: What a run folder's config.yaml means by a field it lacks, where that field's default
#: has changed since such runs were written: the default they were built with.
#: (A --config file a user writes gets today's defaults; a saved run keeps its model.)
RUN_DEFAULTS_BEFORE = {"model": {"attention_identity": False, "attention_levels": "all"}}


def load_yaml(cls: type[T], path: str | Path, missing: dict[str, dict] | None = None) -> T:
    """Read a config dataclass from a YAML file, naming the file in errors.

    ``missing``: ``{section: {field: value}}`` for fields the file's sections lack (e.g.
    ``RUN_DEFAULTS_BEFORE`` for a run folder's own config)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if missing and isinstance(data, dict):
        for section, fields in missing.items():
            if isinstance(data.get(section), dict):
                data[section] = {**fields, **data[section]}
    try:
        return from_dict(cls, data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
