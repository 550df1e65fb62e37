"""The named architectures: each entry is one line of data, a ``ResNetConfig``."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch

from ..errors import ConfigError
from ..pretrained.catalog import PretrainedWeights, default_weights, get_weights
from .features import HRNetFeatures, ResNetFeatures, backbone_of, check_backbone_options
from .hrnet import HRNET_MODELS, HRNet, HRNetConfig
from .resnet import ResNet, ResNetConfig

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
_E = dict(_S, avg_down=True)  # ResNeSt's "e": the S stem with average-pool shortcuts
_RESNEXT_32X4D = dict(groups=32, width_per_group=4)
_RESNEXT_32X8D = dict(groups=32, width_per_group=8)
_RESNEXT_64X4D = dict(groups=64, width_per_group=4)
_SE = dict(attention="se")
_ECA = dict(attention="eca")
# ResNet-RS (Bello et al. 2021): ResNet-D with a strided conv for the stem's pool and SE of a quarter width.
_RS = dict(_D, replace_stem_pool=True, attention="se", se_reduction=4)
# SENet-154 (Hu et al. 2018): a 128-wide deep stem, 3x3 strided shortcuts, first 1x1s half as wide.
# BiT (Kolesnikov et al., ECCV 2020): pre-activation bottlenecks with GroupNorm and weight-standardised
# convs, the stem's pool padding with zeros as TensorFlow did; "xN" multiplies every width by N.
def _bit(layers: tuple[int, ...], width: int) -> ResNetConfig:
    return ResNetConfig(block="preact_bottleneck", layers=layers, channels=tuple(c * width for c in (64, 128, 256, 512)),
                        stem_channels=64 * width, norm="group", weight_standardization=True,
                        stem_pool_zero_padding=True)


_SENET154 = dict(_S, groups=64, width_per_group=4, down_kernel_size=3, block_reduce_first=2, attention="se")
# timm's ECA ResNet-Ds pruned by knapsack search (Aflalo et al. 2020, arXiv:2002.08258), per-block widths
# read from timm's _pruned/*.txt: every 3x3 (mid), first 1x1 (first) and the stream after each stage.
_ECA50D_PRUNED = dict(
    stream_channels=(64, 19, 171, 818, 2022),
    mid_channels=((18, 22, 35), (37, 80, 85, 87), (126, 232, 233, 235, 225, 239), (237, 500, 490)),
    first_channels=((47, 52, 64), (85, 107, 120, 125), (198, 255, 256, 253, 256, 256), (492, 512, 512)))
_ECA101D_PRUNED = dict(
    stream_channels=(64, 26, 142, 278, 2042),
    mid_channels=((25, 20, 27), (24, 49, 54, 78), (25, 160, 156, 176, 191, 175, 128, 154, 159, 97, 149, 181, 119,
                                                    216, 201, 149, 141, 190, 217, 156, 155, 232, 214), (289, 512, 502)),
    first_channels=((45, 53, 60), (81, 93, 102, 122), (101, 239, 234, 250, 253, 251, 230, 244, 244, 238, 244, 253,
                                                        245, 255, 256, 253, 254, 256, 256, 255, 256, 256, 256),
                    (499, 512, 512)))
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
    "senet154": ResNetConfig(layers=_152, **_SENET154),
    "resnet50_gn": ResNetConfig(layers=_50, norm="group"),
    "ecaresnetlight": ResNetConfig(layers=(1, 1, 11, 3), avg_down=True, **_ECA),
    "ecaresnet26t": ResNetConfig(layers=_26, **_T, **_ECA),
    "ecaresnet50d": ResNetConfig(layers=_50, **_D, **_ECA),
    "ecaresnet50d_pruned": ResNetConfig(layers=_50, **_D, **_ECA, **_ECA50D_PRUNED),
    "ecaresnet50t": ResNetConfig(layers=_50, **_T, **_ECA),
    "ecaresnet101d": ResNetConfig(layers=_101, **_D, **_ECA),
    "ecaresnet101d_pruned": ResNetConfig(layers=_101, **_D, **_ECA, **_ECA101D_PRUNED),
    "ecaresnet200d": ResNetConfig(layers=_200, **_D, **_ECA),
    "ecaresnet269d": ResNetConfig(layers=(3, 30, 48, 8), **_D, **_ECA),
    "ecaresnext26t_32x4d": ResNetConfig(layers=_26, **_RESNEXT_32X4D, **_T, **_ECA),
    "ecaresnext50t_32x4d": ResNetConfig(layers=_50, **_RESNEXT_32X4D, **_T, **_ECA),
    "resnetblur18": ResNetConfig(block="basic", layers=_18, aa="blur"),
    "resnetblur50": ResNetConfig(layers=_50, aa="blur"),
    "resnetblur50d": ResNetConfig(layers=_50, **_D, aa="blur"),
    "resnetblur101d": ResNetConfig(layers=_101, **_D, aa="blur"),
    "resnetaa34d": ResNetConfig(block="basic", layers=_34, **_D, aa="avg"),
    "resnetaa50": ResNetConfig(layers=_50, aa="avg"),
    "resnetaa50d": ResNetConfig(layers=_50, **_D, aa="avg"),
    "resnetaa101d": ResNetConfig(layers=_101, **_D, aa="avg"),
    "seresnetaa50d": ResNetConfig(layers=_50, **_D, aa="avg", **_SE),
    "seresnextaa101d_32x8d": ResNetConfig(layers=_101, **_RESNEXT_32X8D, **_D, aa="avg", **_SE),
    "seresnextaa201d_32x8d": ResNetConfig(layers=(3, 24, 36, 4), **_RESNEXT_32X8D, **_S, avg_down=True, aa="avg",
                                          **_SE),
    "res2net50_26w_4s": ResNetConfig(block="res2net", layers=_50, width_per_group=26, res2net_scale=4),
    "res2net50_26w_6s": ResNetConfig(block="res2net", layers=_50, width_per_group=26, res2net_scale=6),
    "res2net50_26w_8s": ResNetConfig(block="res2net", layers=_50, width_per_group=26, res2net_scale=8),
    "res2net50_48w_2s": ResNetConfig(block="res2net", layers=_50, width_per_group=48, res2net_scale=2),
    "res2net50_14w_8s": ResNetConfig(block="res2net", layers=_50, width_per_group=14, res2net_scale=8),
    "res2net101_26w_4s": ResNetConfig(block="res2net", layers=_101, width_per_group=26, res2net_scale=4),
    "res2next50": ResNetConfig(block="res2net", layers=_50, groups=8, width_per_group=4, res2net_scale=4),
    "res2net50d": ResNetConfig(block="res2net", layers=_50, **_D, width_per_group=26, res2net_scale=4),
    "res2net101d": ResNetConfig(block="res2net", layers=_101, **_D, width_per_group=26, res2net_scale=4),
    "resnest14d": ResNetConfig(block="resnest", layers=(1, 1, 1, 1), **_D),
    "resnest26d": ResNetConfig(block="resnest", layers=_26, **_D),
    "resnest50d": ResNetConfig(block="resnest", layers=_50, **_D),
    "resnest101e": ResNetConfig(block="resnest", layers=_101, **_E),
    "resnest200e": ResNetConfig(block="resnest", layers=_200, **_E),
    "resnest269e": ResNetConfig(block="resnest", layers=(3, 30, 48, 8), **_E),
    "resnest50d_4s2x40d": ResNetConfig(block="resnest", layers=_50, **_D, groups=2, width_per_group=40, radix=4,
                                       avd_first=True),
    "resnest50d_1s4x24d": ResNetConfig(block="resnest", layers=_50, **_D, groups=4, width_per_group=24, radix=1,
                                       avd_first=True),
    "skresnet18": ResNetConfig(block="sk_basic", layers=_18, sk_reduction=8, sk_divisor=16),
    "skresnet34": ResNetConfig(block="sk_basic", layers=_34, sk_reduction=8, sk_divisor=16),
    "skresnet50": ResNetConfig(block="sk_bottleneck", layers=_50),
    "skresnet50d": ResNetConfig(block="sk_bottleneck", layers=_50, **_D),
    "skresnext50_32x4d": ResNetConfig(block="sk_bottleneck", layers=_50, **_RESNEXT_32X4D, sk_reduction=16,
                                      sk_divisor=32, sk_split_input=False),
    "resnetrs50": ResNetConfig(layers=_50, **_RS),
    "resnetrs101": ResNetConfig(layers=_101, **_RS),
    "resnetrs152": ResNetConfig(layers=_152, **_RS),
    "resnetrs200": ResNetConfig(layers=_200, **_RS),
    "resnetrs270": ResNetConfig(layers=(4, 29, 53, 4), **_RS),
    # timm's tiny test network: a different block kind in its third stage.
    "test_resnet": ResNetConfig(block="basic", stage_blocks=("basic", "basic", "bottleneck", "basic"),
                                layers=(1, 1, 1, 1), channels=(32, 48, 48, 96), stem_type="deep", stem_width=16,
                                stem_channels=32, avg_down=True),
    "resnetrs350": ResNetConfig(layers=(4, 36, 72, 4), **_RS),
    "resnetrs420": ResNetConfig(layers=(4, 44, 87, 4), **_RS),
    # timm's pre-activation family (timm.models.resnetv2): ResNet-D stems and shortcuts, other norms, BiT.
    "resnetv2_18d": ResNetConfig(block="preact_basic", layers=_18, **_D),
    "resnetv2_34d": ResNetConfig(block="preact_basic", layers=_34, **_D),
    "resnetv2_50d": ResNetConfig(block="preact_bottleneck", layers=_50, **_D),
    "resnetv2_50t": ResNetConfig(block="preact_bottleneck", layers=_50, **_T),
    "resnetv2_101d": ResNetConfig(block="preact_bottleneck", layers=_101, **_D),
    "resnetv2_152d": ResNetConfig(block="preact_bottleneck", layers=_152, **_D),
    "resnetv2_50d_gn": ResNetConfig(block="preact_bottleneck", layers=_50, **_D, norm="group"),
    "resnetv2_50d_evos": ResNetConfig(block="preact_bottleneck", layers=_50, **_D, norm="evonorm_s0"),
    "resnetv2_50d_frn": ResNetConfig(block="preact_bottleneck", layers=_50, **_D, norm="frn"),
    "resnetv2_50x1_bit": _bit(_50, 1),
    "resnetv2_50x3_bit": _bit(_50, 3),
    "resnetv2_101x1_bit": _bit(_101, 1),
    "resnetv2_101x3_bit": _bit(_101, 3),
    "resnetv2_152x2_bit": _bit(_152, 2),
    "resnetv2_152x4_bit": _bit(_152, 4),
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
_HRNET_OPTIONS = tuple(field.name for field in dataclasses.fields(HRNetConfig) if field.name != "num_classes")


def list_models(pattern: str | None = None, aliases: bool = False) -> list[str]:
    """Registered architecture names, optionally filtered by a shell-style pattern (``"resnet*"``).

    ``aliases=True`` adds the other names some networks go by (``ALIASES``: timm's ``seresnet50``
    for ``se_resnet50``, ...); ``alias_of`` tells which network each one builds.
    """
    names = list(MODELS) + list(HRNET_MODELS) + (list(ALIASES) if aliases else [])
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def alias_of(name: str) -> str | None:
    """The registered name an alias builds, or None when ``name`` is not an alias."""
    return ALIASES.get(name)


def aliases_of(name: str) -> list[str]:
    """The other names the registered network ``name`` goes by."""
    return [alias for alias, target in ALIASES.items() if target == name]


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def model_config(name: str, num_classes: int | None = None, **options) -> ResNetConfig | HRNetConfig:
    """The config of a registered architecture (or alias) with ``options`` applied, validated."""
    name = canonical_name(name)
    if name not in MODELS and name not in HRNET_MODELS:
        close = difflib.get_close_matches(name, [*MODELS, *HRNET_MODELS, *ALIASES], n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (`resnetlab models` lists them all)")
    valid = _HRNET_OPTIONS if name in HRNET_MODELS else _OPTIONS
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {name}; "
                          f"valid options: {', '.join(valid)}")
    if num_classes is not None:
        options["num_classes"] = num_classes
    return dataclasses.replace(HRNET_MODELS[name] if name in HRNET_MODELS else MODELS[name], **options)


def build_model(config: ResNetConfig | HRNetConfig, arch: str = "custom") -> ResNet | HRNet:
    """The network ``config`` describes, randomly initialised: an ``HRNet`` for an ``HRNetConfig``."""
    return HRNet(config, arch=arch) if isinstance(config, HRNetConfig) else ResNet(config, arch=arch)


def create_model(name: str, num_classes: int | None = None, *, pretrained: bool | str = False,
                 features_only: bool = False, out_indices: tuple[int, ...] | None = None,
                 frozen_stages: int | None = None, norm_eval: bool = False,
                 **options) -> ResNet | HRNet | ResNetFeatures | HRNetFeatures:
    """Build a registered ResNet or HRNet, randomly initialised (He init; BN weight 1, bias 0), or pretrained.

    ``pretrained`` loads named weights (``resnetlab.list_pretrained()``): ``True`` the architecture's default
    tag (its best published ImageNet-1k top-1), a string that tag (``create_model("resnet50",
    pretrained="tv2_in1k")``); ``name`` may carry the tag itself (``"resnet50.a1_in1k"``, which alone sets
    the tag's class count and input). The model comes back with the tag's preprocessing and class names;
    a different ``num_classes`` re-initialises the head for fine-tuning.

    ``num_classes`` defaults to the architecture's own (1000 for ImageNet nets, 10 for the
    CIFAR nets); 0 gives a model that returns pooled embeddings. ``options`` are any
    ``ResNetConfig`` fields: ``in_chans``, ``zero_init_residual``, ``deformable``,
    ``drop_path_rate``, ``groups``, ``width_per_group``, ``stride_in_1x1``, ``layers``, ...;
    an HRNet's are ``HRNetConfig`` fields (``widths``, ``modules``, ``blocks``, ...).

    ``features_only=True`` returns a ``ResNetFeatures`` (or ``HRNetFeatures``) backbone instead: its
    forward gives the feature maps at ``out_indices`` (0 the stem, 1..N the stages, or an HRNet's four
    widened branches; default all but the stem), with ``frozen_stages`` and ``norm_eval`` as documented there.
    """
    name, weights = _named_weights(name, pretrained)
    config = model_config(name, num_classes if num_classes is not None or weights is None else weights.num_classes,
                          **options)
    if not features_only and (out_indices is not None or frozen_stages is not None or norm_eval):
        raise ConfigError("out_indices, frozen_stages and norm_eval shape a backbone; "
                          "pass features_only=True with them")
    if features_only:
        check_backbone_options(name, len(config.layers), out_indices, frozen_stages)  # before the build
    model = build_model(config, arch=name)
    if weights is not None:
        model.preprocessing = weights.eval_preprocessing
    if pretrained:
        # Imported here because loading weights builds models through this registry.
        from .weights import load_pretrained

        load_pretrained(model, weights)
    if not features_only:
        return model
    return backbone_of(model, out_indices, frozen_stages, norm_eval)


def _named_weights(name: str, pretrained: bool | str) -> tuple[str, PretrainedWeights | None]:
    """The architecture ``name`` builds and the pretrained weights it asks for, by its tag or ``pretrained``."""
    arch, _, tag = name.partition(".")
    arch = canonical_name(arch)
    model_config(arch)  # an unknown architecture is named as such, not as one without weights
    if isinstance(pretrained, str):
        pretrained = pretrained.removeprefix(f"{name.partition('.')[0]}.")  # the whole tag is fine too
        if tag and tag != pretrained:
            raise ConfigError(f"{name} names its weights already; pretrained={pretrained!r} names other ones")
        tag = pretrained
    if tag:
        return arch, get_weights(f"{arch}.{tag}")
    return arch, default_weights(arch) if pretrained else None
