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


# The stems and shortcuts of Bag of Tricks (He et al. 2019) under timm's suffixes: C a deep stem of
# three 3x3 convs (32, 32, 64 wide), D that stem and average-pool shortcuts, S a deep stem twice as
# wide (64, 64, 128), T a tiered deep stem (24, 32, 64) and average-pool shortcuts.
_C = dict(stem_type="deep", stem_width=32, stem_channels=64)
_D = dict(_C, avg_down=True)
_S = dict(stem_type="deep", stem_width=64, stem_channels=128)
_T = dict(stem_type="deep_tiered", stem_width=32, stem_channels=64, avg_down=True)
_RESNEXT_32X4D = dict(groups=32, width_per_group=4)
_RESNEXT_32X8D = dict(groups=32, width_per_group=8)
_RESNEXT_64X4D = dict(groups=64, width_per_group=4)
_SE = dict(attention="se")
_18, _26, _34, _50, _101, _152, _200 = (2, 2, 2, 2), (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3), (3, 4, 23, 3), \
    (3, 8, 36, 3), (3, 24, 36, 3)

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
    # timm's ResNet family (timm.models.resnet), under timm's names.
    "resnet10t": ResNetConfig(block="basic", layers=(1, 1, 1, 1), **_T),
    "resnet14t": ResNetConfig(block="bottleneck", layers=(1, 1, 1, 1), **_T),
    "resnet18d": ResNetConfig(block="basic", layers=_18, **_D),
    "resnet26": ResNetConfig(layers=_26),
    "resnet26d": ResNetConfig(layers=_26, **_D),
    "resnet26t": ResNetConfig(layers=_26, **_T),
    "resnet34d": ResNetConfig(block="basic", layers=_34, **_D),
    "resnet50c": ResNetConfig(layers=_50, **_C),
    "resnet50d": ResNetConfig(layers=_50, **_D),
    "resnet50s": ResNetConfig(layers=_50, **_S),
    "resnet50t": ResNetConfig(layers=_50, **_T),
    "resnet101c": ResNetConfig(layers=_101, **_C),
    "resnet101d": ResNetConfig(layers=_101, **_D),
    "resnet101s": ResNetConfig(layers=_101, **_S),
    "resnet152c": ResNetConfig(layers=_152, **_C),
    "resnet152d": ResNetConfig(layers=_152, **_D),
    "resnet152s": ResNetConfig(layers=_152, **_S),
    "resnet200": ResNetConfig(layers=_200),
    "resnet200d": ResNetConfig(layers=_200, **_D),
    "resnext50d_32x4d": ResNetConfig(layers=_50, **_RESNEXT_32X4D, **_D),
    "resnext101_32x4d": ResNetConfig(layers=_101, **_RESNEXT_32X4D),
    "resnext101_32x16d": ResNetConfig(layers=_101, groups=32, width_per_group=16),
    "resnext101_32x32d": ResNetConfig(layers=_101, groups=32, width_per_group=32),
    "seresnet18": ResNetConfig(block="basic", layers=_18, **_SE),
    "seresnet34": ResNetConfig(block="basic", layers=_34, **_SE),
    "seresnet50t": ResNetConfig(layers=_50, **_T, **_SE),
    "seresnet152d": ResNetConfig(layers=_152, **_D, **_SE),
    "seresnet200d": ResNetConfig(layers=_200, **_D, **_SE),
    "seresnet269d": ResNetConfig(layers=(3, 30, 48, 8), **_D, **_SE),
    "seresnext26d_32x4d": ResNetConfig(layers=_26, **_RESNEXT_32X4D, **_D, **_SE),
    "seresnext26t_32x4d": ResNetConfig(layers=_26, **_RESNEXT_32X4D, **_T, **_SE),
    "seresnext50_32x4d": ResNetConfig(layers=_50, **_RESNEXT_32X4D, **_SE),
    "seresnext101_32x4d": ResNetConfig(layers=_101, **_RESNEXT_32X4D, **_SE),
    "seresnext101_32x8d": ResNetConfig(layers=_101, **_RESNEXT_32X8D, **_SE),
    "seresnext101d_32x8d": ResNetConfig(layers=_101, **_RESNEXT_32X8D, **_D, **_SE),
    "seresnext101_64x4d": ResNetConfig(layers=_101, **_RESNEXT_64X4D, **_SE),
    "cifar_resnet20": _cifar_resnet(20),
    "cifar_resnet32": _cifar_resnet(32),
    "cifar_resnet44": _cifar_resnet(44),
    "cifar_resnet56": _cifar_resnet(56),
    "cifar_resnet110": _cifar_resnet(110),
    "cifar_resnet1202": _cifar_resnet(1202),
    "cifar_preact_resnet164": _cifar_preact_resnet(164),
    "cifar_preact_resnet1001": _cifar_preact_resnet(1001),
}

# The same network under timm's name: alias -> the resnetlab name it builds (and saves as).
ALIASES: dict[str, str] = {
    "seresnet50": "se_resnet50", "seresnet101": "se_resnet101", "seresnet152": "se_resnet152",
    "resnetv2_18": "preact_resnet18", "resnetv2_34": "preact_resnet34", "resnetv2_50": "preact_resnet50",
    "resnetv2_101": "preact_resnet101", "resnetv2_152": "preact_resnet152",
}

_OPTIONS = tuple(field.name for field in dataclasses.fields(ResNetConfig) if field.name != "num_classes")


def list_models(pattern: str | None = None, aliases: bool = False) -> list[str]:
    """Registered architecture names, optionally filtered by a shell-style pattern (``"resnet*"``).

    ``aliases=True`` adds the other names some networks go by (``ALIASES``: timm's ``seresnet50``
    for ``se_resnet50``, ...); ``alias_of`` tells which network each one builds.
    """
    names = list(MODELS) + (list(ALIASES) if aliases else [])
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def alias_of(name: str) -> str | None:
    """The registered name an alias builds, or None when ``name`` is not an alias."""
    return ALIASES.get(name)


def aliases_of(name: str) -> list[str]:
    """The other names the registered network ``name`` goes by."""
    return [alias for alias, target in ALIASES.items() if target == name]


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def model_config(name: str, num_classes: int | None = None, **options) -> ResNetConfig:
    """The config of a registered architecture (or alias) with ``options`` applied, validated."""
    name = canonical_name(name)
    if name not in MODELS:
        close = difflib.get_close_matches(name, [*MODELS, *ALIASES], n=3)
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
    name = canonical_name(name)
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
