"""Encoders: the plain UNet encoder, or a pretrained classification backbone.

An encoder turns the input image into a bottleneck tensor and a table of
skip tensors keyed by *level*: the skip at level ``l`` has stride ``2**l``
(level 0 is full resolution). The decoder in ``unet.py`` walks this table
from the deepest level up, so every encoder gets the same decoder and the
same attention on its skips.

Backbones come from segmentation-models, whose table of skip layers
(``Backbones.get_feature_layers``) we reuse. segmentation-models builds its
ResNets with ``classification_models``, which works on Keras 3; its VGG,
MobileNet, DenseNet and EfficientNet builders call Keras 2 APIs that Keras 3
removed (``backend.int_shape``, ``backend.sigmoid``), so those come from
``keras.applications``, which has the same architectures and layer names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from unet_cbam.config import ModelConfig
from unet_cbam.layers import PixelNormalization
from unet_cbam.models.blocks import attention_block, conv_block
from unet_cbam.segmentation_models import KERAS_SUBMODULES, sm

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class InputRange:
    """How a backbone's pretrained weights expect pixels (see PixelNormalization)."""

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    reverse_channels: bool = False


RANGE_0_255 = InputRange(scale=255.0)
RANGE_TF = InputRange(scale=2.0, mean=(1.0,))
RANGE_TORCH = InputRange(mean=IMAGENET_MEAN, std=IMAGENET_STD)
RANGE_CAFFE = InputRange(scale=255.0, mean=CAFFE_MEAN_BGR, reverse_channels=True)


@dataclass(frozen=True)
class Backbone:
    """A backbone: how to build it (weights=None) and the range its weights expect."""

    build: Callable[..., keras.Model]
    input_range: InputRange


def _segmentation_models_backbone(name: str) -> Callable[..., keras.Model]:
    def build(input_shape, weights):
        return sm.Backbones.get_backbone(
            name, input_shape=input_shape, weights=weights, include_top=False,
            **KERAS_SUBMODULES,
        )
    return build


def _keras_application(constructor: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    def build(input_shape, weights):
        return constructor(input_shape=input_shape, weights=weights, include_top=False)
    return build


_apps = keras.applications
BACKBONES: dict[str, Backbone] = {
    # classification_models' ResNets normalise inside (their 'bn_data' layer) and take 0-255.
    **{name: Backbone(_segmentation_models_backbone(name), RANGE_0_255)
       for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    "vgg16": Backbone(_keras_application(_apps.VGG16), RANGE_CAFFE),
    "vgg19": Backbone(_keras_application(_apps.VGG19), RANGE_CAFFE),
    "mobilenetv2": Backbone(_keras_application(_apps.MobileNetV2), RANGE_TF),
    "densenet121": Backbone(_keras_application(_apps.DenseNet121), RANGE_TORCH),
    "densenet169": Backbone(_keras_application(_apps.DenseNet169), RANGE_TORCH),
    "densenet201": Backbone(_keras_application(_apps.DenseNet201), RANGE_TORCH),
    # Keras' EfficientNets rescale and normalise inside and take 0-255.
    **{f"efficientnetb{i}": Backbone(_keras_application(getattr(_apps, f"EfficientNetB{i}")),
                                     RANGE_0_255)
       for i in range(8)},
}


def build_encoder(image: keras.KerasTensor, config: ModelConfig
                  ) -> tuple[keras.KerasTensor, dict[int, keras.KerasTensor]]:
    """Return ``(bottleneck, skips)`` for ``image``; ``skips`` maps level -> tensor."""
    if config.is_plain_unet:
        return _plain_encoder(image, config)
    return _backbone_encoder(image, config)


def _encoder_attention(config: ModelConfig) -> set[int]:
    """Levels whose encoder stage output gets attention (``attention_position: encoder``)."""
    return set(config.attended_levels) if config.attention_position == "encoder" else set()


def _plain_encoder(image, config):

    skips = {}
    x = image
    attended = _encoder_attention(config)
    for level in range(config.resolved_depth):
        x = conv_block(x, config.base_filters * 2**level, config, f"encoder_stage{level}")
        if level in attended:
            x = attention_block(x, config, "encoder", level)
        skips[level] = x
        x = keras.layers.MaxPooling2D(2, name=f"encoder_stage{level}_pool")(x)
    bottleneck = conv_block(x, config.base_filters * 2**config.resolved_depth, config,
                            "bottleneck")
    return bottleneck, skips


def _backbone_encoder(image, config):
    backbone = _build_backbone(config)
    # segmentation-models lists skip layers deepest first: strides 16, 8, 4, 2.
    feature_layers = sm.Backbones.get_feature_layers(config.encoder, n=4)
    features = {5: backbone.output}
    for level, layer in zip((4, 3, 2, 1), feature_layers, strict=True):
        found = backbone.get_layer(layer) if isinstance(layer, str) else \
            backbone.get_layer(index=layer)
        features[level] = found.output
    depth = config.resolved_depth
    levels = list(range(1, depth))
    encoder = keras.Model(backbone.input, [features[depth]] + [features[lv] for lv in levels],
                          name="encoder")
    if config.encoder_freeze:
        encoder.trainable = False
    input_range = BACKBONES[config.encoder].input_range
    x = PixelNormalization(
        scale=input_range.scale,
        mean=_per_channel(input_range.mean, config.input_channels),
        std=_per_channel(input_range.std, config.input_channels),
        reverse_channels=input_range.reverse_channels and config.input_channels == 3,
        name="input_normalization",
    )(image)
    attended = _encoder_attention(config)
    if attended:
        outputs = _with_stage_attention(encoder, x, {
            id(features[level]): level for level in attended}, config)
    else:
        outputs = encoder(x)
    return outputs[0], dict(zip(levels, outputs[1:], strict=True))


def _with_stage_attention(encoder: keras.Model, x: keras.KerasTensor,
                          targets: dict[int, int], config: ModelConfig) -> list:
    """The encoder's graph called on ``x`` layer by layer, with attention applied to the
    stage outputs in ``targets`` (tensor id -> level) before anything uses them: the
    deeper stages and the skip see the attended features. The backbone's layers (and
    weights) are reused; they become layers of the UNet itself rather than of a nested
    ``encoder`` model."""

    # Which operation produces each target tensor (a backbone layer is called once).
    produced_by = {}
    for node_list in encoder._nodes_by_depth.values():  # Keras' Functional graph
        for node in node_list:
            for tensor in node.outputs:
                if id(tensor) in targets:
                    produced_by[id(node.operation)] = targets[id(tensor)]

    def operation_fn(operation):
        level = produced_by.get(id(operation))
        if level is None:
            return operation
        return lambda *args, **kwargs: attention_block(operation(*args, **kwargs), config,
                                                       "encoder", level)
    return encoder._run_through_graph(x, operation_fn)


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    """Per-channel statistics for ``channels`` channels (their mean if counts differ)."""
    if len(values) == channels:
        return list(values)
    return [sum(values) / len(values)] * channels


def _build_backbone(config: ModelConfig) -> keras.Model:
    if config.encoder not in BACKBONES:
        raise ValueError(
            f"unknown encoder {config.encoder!r}; choose 'unet' or one of: "
            f"{', '.join(BACKBONES)}")
    spec = BACKBONES[config.encoder]
    input_shape = (*(config.input_size or (None, None)), config.input_channels)
    weights = config.encoder_weights
    if weights == "imagenet":
        try:
            return spec.build(input_shape, "imagenet")
        except Exception as error:  # network errors come in many types
            raise RuntimeError(
                f"could not get the imagenet weights of {config.encoder!r} ({error}). Without "
                "internet, download the weights file elsewhere and set encoder_weights to its "
                "path") from error
    backbone = spec.build(input_shape, None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"encoder_weights {weights}: file not found")
        try:
            backbone.load_weights(str(path))
        except Exception as error:
            raise ValueError(
                f"encoder_weights {weights}: cannot load into {config.encoder!r}: {error}"
            ) from error
        logger.info("loaded %s encoder weights from %s", config.encoder, path)
    return backbone
