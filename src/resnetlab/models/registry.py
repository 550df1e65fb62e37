"""The named architectures: each entry is one line of data, a ``ResNetConfig``."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .resnet import ResNet, ResNetConfig

if TYPE_CHECKING:
    from ..backbones.features import ResNetFeatures

_CIFAR = dict(stem="cifar", stem_channels=16, channels=(16, 32, 64), num_classes=10)


def _cifar_resnet(depth: int) -> ResNetConfig:
    # Section 4.2 of He et al. 2016: 6n+2 layers, 3x3 stem, identity shortcuts zero-padded (option A).
    n = (depth - 2) // 6
    return ResNetConfig(block="basic", layers=(n, n, n), shortcut="zero_pad", **_CIFAR)


def _cifar_preact_resnet(depth: int) -> ResNetConfig:
    # He et al. ECCV 2016: pre-activation bottlenecks, 9n+2 layers, projection shortcuts.
    n = (depth - 2) // 9
    return ResNetConfig(block="preact_bottleneck", layers=(n, n, n), **_CIFAR)


MODELS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": ResNetConfig(block="basic", layers=(3, 4, 6, 3)),
    "resnet50": ResNetConfig(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101": ResNetConfig(block="bottleneck", layers=(3, 4, 23, 3)),
    "resnet152": ResNetConfig(block="bottleneck", layers=(3, 8, 36, 3)),
    "resnext50_32x4d": ResNetConfig(layers=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetConfig(layers=(3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": ResNetConfig(layers=(3, 4, 23, 3), groups=64, width_per_group=4),
    "wide_resnet50_2": ResNetConfig(layers=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": ResNetConfig(layers=(3, 4, 23, 3), width_per_group=128),
    "preact_resnet18": ResNetConfig(block="preact_basic", layers=(2, 2, 2, 2)),
    "preact_resnet34": ResNetConfig(block="preact_basic", layers=(3, 4, 6, 3)),
    "preact_resnet50": ResNetConfig(block="preact_bottleneck", layers=(3, 4, 6, 3)),
    "preact_resnet101": ResNetConfig(block="preact_bottleneck", layers=(3, 4, 23, 3)),
    "preact_resnet152": ResNetConfig(block="preact_bottleneck", layers=(3, 8, 36, 3)),
    "se_resnet50": ResNetConfig(layers=(3, 4, 6, 3), attention="se"),
    "se_resnet101": ResNetConfig(layers=(3, 4, 23, 3), attention="se"),
    "se_resnet152": ResNetConfig(layers=(3, 8, 36, 3), attention="se"),
    "cifar_resnet20": _cifar_resnet(20),
    "cifar_resnet32": _cifar_resnet(32),
    "cifar_resnet44": _cifar_resnet(44),
    "cifar_resnet56": _cifar_resnet(56),
    "cifar_resnet110": _cifar_resnet(110),
    "cifar_resnet1202": _cifar_resnet(1202),
    "cifar_preact_resnet164": _cifar_preact_resnet(164),
    "cifar_preact_resnet1001": _cifar_preact_resnet(1001),
}

_OPTIONS = tuple(field.name for field in dataclasses.fields(ResNetConfig) if field.name != "num_classes")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered architecture names, optionally filtered by a shell-style pattern (``"resnet*"``)."""
    names = list(MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def model_config(name: str, num_classes: int | None = None, **options) -> ResNetConfig:
    """The config of a registered architecture with ``options`` applied, validated."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (`resnetlab models` lists them all)")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {name}; "
                          f"valid options: {', '.join(_OPTIONS)}")
    if num_classes is not None:
        options["num_classes"] = num_classes
    return dataclasses.replace(MODELS[name], **options)


def create_model(name: str, num_classes: int | None = None, *, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None, frozen_stages: int | None = None,
                 norm_eval: bool = False, **options) -> ResNet | ResNetFeatures:
    """Build a registered ResNet, randomly initialised (He init; BN weight 1, bias 0).

    ``num_classes`` defaults to the architecture's own (1000 for ImageNet nets, 10 for the
    CIFAR nets); 0 gives a model that returns pooled embeddings. ``options`` are any
    ``ResNetConfig`` fields: ``in_chans``, ``zero_init_residual``, ``deformable``,
    ``drop_path_rate``, ``groups``, ``width_per_group``, ``stride_in_1x1``, ``layers``, ...

    ``features_only=True`` returns a ``ResNetFeatures`` backbone instead: its forward gives
    the feature maps at ``out_indices`` (0 the stem, 1..N the stages; default all stages),
    with ``frozen_stages`` and ``norm_eval`` as documented there.
    """
    config = model_config(name, num_classes, **options)
    if not features_only:
        if out_indices is not None or frozen_stages is not None or norm_eval:
            raise ConfigError("out_indices, frozen_stages and norm_eval shape a backbone; "
                              "pass features_only=True with them")
        return ResNet(config, arch=name)
    # Imported here because resnetlab.backbones builds on this registry (fpn calls create_model).
    from ..backbones.features import ResNetFeatures, check_backbone_options

    check_backbone_options(name, len(config.layers), out_indices, frozen_stages)  # before the build
    return ResNetFeatures(ResNet(config, arch=name), out_indices, frozen_stages, norm_eval)
