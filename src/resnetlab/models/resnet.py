"""One ResNet class for the whole family; every variant is a field of ``ResNetConfig``."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import DeformConv2d

from ..typed_fields import check_types
from ..errors import ConfigError
from ..preprocessing import CIFAR10, IMAGENET, Preprocessing
from .blocks import (ANTI_ALIASING, ATTENTIONS, BLOCKS, BlurPool, DeformableConv3x3, SamePadAvgPool, ZeroPadShortcut,
                     anti_alias, attention_module, conv1x1, deep_stem)
from .freezing import freeze_modules, keep_frozen_in_eval
from .grad_checkpointing import checkpointed
from .norms import NORMS, SELF_ACTIVATING_NORMS, activation_after, norm_layer, standardize_convolutions

STEMS = ("imagenet", "cifar")
STEM_TYPES = ("plain", "deep", "deep_tiered")
MIXABLE_BLOCKS = {"basic", "bottleneck"}  # the kinds stage_blocks may mix: post-activation, no options of their own
SHORTCUTS = ("projection", "zero_pad")
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that defines a ResNet architecture. Saved beside weights, so it must stay plain data."""

    # basic | bottleneck | preact_basic | preact_bottleneck | res2net | resnest | sk_basic | sk_bottleneck
    block: str = "bottleneck"
    # One block kind per stage, mixing "basic" and "bottleneck" (timm's test_resnet); None: block everywhere.
    stage_blocks: tuple[str, ...] | None = None
    layers: tuple[int, ...] = (3, 4, 6, 3)  # residual blocks per stage
    channels: tuple[int, ...] = (64, 128, 256, 512)  # per stage; a block outputs channels * expansion
    stem: str = "imagenet"  # imagenet: 7x7/2 conv + 3x3/2 max-pool; cifar: 3x3/1 conv
    stem_channels: int = 64  # the stem's output width
    # The ImageNet stem's convolution: "plain" one 7x7/2; "deep" three 3x3, the first at stride 2, of
    # widths stem_width, stem_width, stem_channels (ResNet-C of Bag of Tricks, He et al. 2019);
    # "deep_tiered" the same with a first conv 3/4 as wide (timm's ResNet-T).
    stem_type: str = "plain"
    stem_width: int = 32  # inner width of a deep stem
    # Projection shortcuts of ResNet-D: a 2x2 average pool takes the stride, then a 1x1 conv at
    # stride 1, so no activation is skipped by a strided 1x1 (Bag of Tricks).
    avg_down: bool = False
    # The stem's max-pool becomes a 3x3/2 conv-BN-ReLU of the stem's width (ResNet-RS, Bello et al. 2021).
    replace_stem_pool: bool = False
    # The stem's max-pool pads with zeros rather than -inf (BiT's fixed padding): on a pre-activation
    # stem, whose conv output is not yet rectified, the two differ at the border.
    stem_pool_zero_padding: bool = False
    down_kernel_size: int = 1  # projection shortcuts' conv: 1, or 3 (SENet-154) where it strides
    # A block's first conv is block_reduce_first times narrower than its 3x3 (SENet-154: 2).
    block_reduce_first: int = 1
    shortcut: str = "projection"  # projection: 1x1 conv when shapes change (option B); zero_pad: option A
    groups: int = 1  # grouped 3x3 (ResNeXt cardinality)
    width_per_group: int = 64  # 3x3 width = channels * width_per_group / 64 * groups
    # Per-block inner widths, one tuple per stage; overrides groups/width_per_group (pruned networks).
    mid_channels: tuple[tuple[int, ...], ...] | None = None
    # The residual stream's width after the stem and after each stage; overrides stem_channels and
    # channels * expansion (pruned networks). The shortcuts keep the kinds those nominal widths give.
    stream_channels: tuple[int, ...] | None = None
    # Per-block widths of a bottleneck's first 1x1, where they differ from its 3x3's (timm's pruned ECA nets).
    first_channels: tuple[tuple[int, ...], ...] | None = None
    stride_in_1x1: bool = False  # True: original v1, stride on the first 1x1; False: v1.5
    res2net_scale: int = 4  # block "res2net": the first 1x1's output splits into this many 3x3 inputs
    radix: int = 2  # block "resnest": splits per group of its split-attention 3x3 (1: a sigmoid gate)
    avd_first: bool = False  # block "resnest": a strided block pools before its 3x3 rather than after
    # Blocks "sk_basic", "sk_bottleneck": the selective kernel's attention is 1/sk_reduction of its width,
    # rounded to a multiple of sk_divisor; sk_split_input feeds each of its two paths half the channels.
    sk_reduction: int = 16
    sk_divisor: int = 8
    sk_split_input: bool = True
    attention: str | None = None  # None | "se" (squeeze-excite) | "eca" (efficient channel attention)
    se_reduction: int = 16  # SE's bottleneck is 1/se_reduction of the channels (ResNet-RS: 4)
    # Anti-aliasing (Zhang 2019): strided 3x3s and the stem pool run at stride 1, then a "blur" pool
    # (a binomial filter) or an "avg" pool takes the stride; None keeps plain strides.
    aa: str | None = None
    # batch | group (GroupNorm, 32 groups) | evonorm_s0 | frn (filter response norm): the last two are
    # their own activation, for pre-activation blocks.
    norm: str = "batch"
    # Every conv standardises its filters as it runs (Qiao et al. 2019; BiT, with norm "group").
    weight_standardization: bool = False
    # The input/output size ratio of the last stage: 16 or 8 turns the last strides into dilations,
    # for dense prediction (torchvision's replace_stride_with_dilation); the weights are the same.
    output_stride: int = 32
    # 3x3 convs that become deformable: True means every stage but the first (DCNv2 puts them
    # in conv3..conv5); or the 1-based stage numbers.
    deformable: bool | tuple[int, ...] = False
    drop_path_rate: float = 0.0  # stochastic depth of the last block; rises linearly from 0
    zero_init_residual: bool = False  # zero the last BN of each block so it starts as identity
    in_chans: int = 3
    num_classes: int = 1000

    def __post_init__(self) -> None:
        check_types(ResNetConfig, vars(self))
        # Normalise lists (from JSON or the command line) into tuples so configs compare and hash.
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.mid_channels is not None:
            object.__setattr__(self, "mid_channels", tuple(tuple(stage) for stage in self.mid_channels))
        if self.stream_channels is not None:
            object.__setattr__(self, "stream_channels", tuple(self.stream_channels))
        if self.first_channels is not None:
            object.__setattr__(self, "first_channels", tuple(tuple(stage) for stage in self.first_channels))
        if self.stage_blocks is not None:
            object.__setattr__(self, "stage_blocks", tuple(self.stage_blocks))
        if not isinstance(self.deformable, bool):
            object.__setattr__(self, "deformable", tuple(self.deformable))
        self._validate()

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(message)

        if self.block not in BLOCKS:
            fail(f"unknown block {self.block!r}; choose one of {', '.join(BLOCKS)}")
        if self.stage_blocks is not None and (
                len(self.stage_blocks) != len(self.layers) or not set(self.stage_blocks) <= MIXABLE_BLOCKS
                or self.block not in MIXABLE_BLOCKS or self.mid_channels is not None or self.first_channels is not None):
            fail(f"stage_blocks needs one of basic or bottleneck for each of the {len(self.layers)} stages, with block "
                 "basic or bottleneck and no per-block widths")
        if self.stem not in STEMS:
            fail(f"unknown stem {self.stem!r}; choose one of {', '.join(STEMS)}")
        if self.stem_type not in STEM_TYPES:
            fail(f"unknown stem_type {self.stem_type!r}; choose one of {', '.join(STEM_TYPES)}")
        if self.stem_type != "plain" and self.stem != "imagenet":
            fail(f"stem_type {self.stem_type!r} replaces the ImageNet stem's 7x7 conv; the {self.stem} stem has none")
        if self.stem_width < 4:
            fail(f"stem_width must be at least 4, not {self.stem_width}")
        if self.shortcut not in SHORTCUTS:
            fail(f"unknown shortcut {self.shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
        if self.attention not in ATTENTIONS:
            fail(f"unknown attention {self.attention!r}; choose None, 'se' or 'eca'")
        if self.aa not in ANTI_ALIASING:
            fail(f"unknown aa {self.aa!r}; choose None, 'blur' or 'avg'")
        if self.norm not in NORMS:
            fail(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.output_stride not in OUTPUT_STRIDES:
            fail(f"output_stride must be 8, 16 or 32, not {self.output_stride}")
        if self.output_stride != 32 and self.stem != "imagenet":
            fail(f"output_stride applies to ImageNet-stem models; the {self.stem} stem keeps every stride")
        if self.down_kernel_size not in (1, 3):
            fail(f"down_kernel_size must be 1 or 3, not {self.down_kernel_size}")
        if self.block_reduce_first < 1 or self.se_reduction < 1:
            fail("block_reduce_first and se_reduction must be positive")
        changes_stem_pool = self.replace_stem_pool or self.aa is not None or self.stem_pool_zero_padding
        if changes_stem_pool and self.stem != "imagenet":
            fail(f"replace_stem_pool, stem_pool_zero_padding and aa change the ImageNet stem's pool; the {self.stem} "
                 "stem has none")
        if self.stem_pool_zero_padding and (self.replace_stem_pool or self.aa is not None):
            fail("stem_pool_zero_padding pads the stem's max-pool, which replace_stem_pool and aa replace")
        if self.aa is not None and self.stride_in_1x1:
            fail("aa moves the 3x3's stride onto a pool; it cannot be combined with stride_in_1x1")
        if not self.layers or len(self.layers) != len(self.channels):
            fail(f"layers {list(self.layers)} and channels {list(self.channels)} must list the same "
                 "number of stages (at least one)")
        if any(n < 1 for n in self.layers) or any(c < 1 for c in self.channels):
            fail("every stage needs at least one block and one channel")
        if min(self.expansions) == 1 and (self.groups != 1 or self.width_per_group != 64):
            fail(f"{self.block if self.stage_blocks is None else 'basic'} blocks support only groups=1 and "
                 "width_per_group=64; use a bottleneck block for ResNeXt or Wide ResNet")
        if self.groups < 1 or self.width_per_group < 1:
            fail("groups and width_per_group must be positive")
        if self.block in ("res2net", "resnest") and (
                self.aa is not None or self.deformable_stages or self.stride_in_1x1 or self.block_reduce_first != 1
                or self.first_channels is not None):
            fail(f"{self.block} blocks have a 3x3 of their own: aa, deformable, stride_in_1x1, block_reduce_first "
                 "and first_channels are not available for them")
        if self.block.startswith("sk_") and (self.aa is not None or self.deformable_stages or self.stride_in_1x1):
            fail(f"{self.block} blocks have a 3x3 of their own: aa, deformable and stride_in_1x1 are not available "
                 "for them")
        if self.sk_reduction < 1 or self.sk_divisor < 1:
            fail("sk_reduction and sk_divisor must be positive")
        if self.block == "resnest" and self.attention is not None:
            fail("resnest blocks have split attention already; leave attention None")
        if self.res2net_scale < 2 or self.radix < 1:
            fail("res2net_scale must be at least 2 and radix at least 1")
        if self.block_type.preact and (self.attention is not None or self.aa is not None
                                       or self.block_reduce_first != 1 or self.first_channels is not None):
            fail("attention, aa, block_reduce_first and first_channels are not available for pre-activation "
                 "blocks; use a post-activation block")
        if not self.block_type.preact and (self.norm in SELF_ACTIVATING_NORMS or self.weight_standardization):
            fail(f"norm {self.norm!r} and weight_standardization are for pre-activation blocks (timm's ResNetV2); "
                 f"{self.block} blocks are post-activation")
        if self.first_channels is not None and (
                self.block_type.expansion == 1 or tuple(len(stage) for stage in self.first_channels) != self.layers
                or not all(w >= 1 for stage in self.first_channels for w in stage)):
            fail(f"first_channels needs one positive width per bottleneck block: {list(self.layers)} per stage")
        if self.mid_channels is not None and (
                tuple(len(stage) for stage in self.mid_channels) != self.layers
                or not all(w >= 1 for stage in self.mid_channels for w in stage)):
            fail(f"mid_channels needs one positive whole width per block: {list(self.layers)} blocks per stage")
        if self.stream_channels is not None:
            self._validate_stream_channels(fail)
        conv_groups = self.groups * (self.radix if self.block == "resnest" else 1)
        if conv_groups > 1 and any(w % conv_groups for stage in range(len(self.layers))
                                   for w in (*self.stage_mid_channels(stage), *self.stage_first_channels(stage))):
            fail(f"the grouped 3x3's input and output widths must be multiples of its {conv_groups} groups")
        if self.norm in ("group", "evonorm_s0") and any(c % 32 for c in self._every_norm_width()):
            fail(f"norm {self.norm!r} splits channels into 32 groups; every width must be a multiple of 32")
        if self.in_chans < 1:
            fail(f"in_chans must be at least 1, not {self.in_chans}")
        if self.num_classes < 0:
            fail(f"num_classes must be 0 or more (0 removes the classifier), not {self.num_classes}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            fail(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        bad_stages = set(self.deformable_stages) - set(range(1, len(self.layers) + 1))
        if bad_stages:
            fail(f"deformable stages {sorted(bad_stages)} do not exist; "
                 f"stages are numbered 1..{len(self.layers)}")

    def _every_norm_width(self) -> list[int]:
        widths = list(self.built_stream_channels)
        if self.stem_type == "deep_tiered":
            widths += [self.stem_width, 3 * (self.stem_width // 4)]
        elif self.stem_type == "deep":
            widths.append(self.stem_width)
        for stage in range(len(self.layers)):
            widths += [*self.stage_mid_channels(stage), *self.stage_first_channels(stage)]
        return widths

    def _validate_stream_channels(self, fail) -> None:
        widths = self.stream_channels
        if len(widths) != len(self.layers) + 1 or not all(w >= 1 for w in widths):
            fail(f"stream_channels needs {len(self.layers) + 1} positive whole widths: the stem's, then one per stage")
        for stage in range(len(self.layers)):
            before, after = widths[stage], widths[stage + 1]
            shortcut = self.entry_shortcut(stage)
            if shortcut is None and after != before:
                fail(f"stage {stage + 1} starts with an identity shortcut, so its stream width must equal the "
                     f"one before it ({before}), not {after}")
            if shortcut == "zero_pad" and after < before:
                fail(f"stage {stage + 1} zero-pads its shortcut, so its stream width cannot shrink "
                     f"({before} -> {after})")

    def entry_shortcut(self, stage: int) -> str | None:
        """The shortcut of a 0-based stage's first block: None (identity), "zero_pad" or "projection".

        Decided by the nominal widths (stem_channels, channels), so pruning never changes it.
        """
        before, after = self.nominal_stream_channels[stage:stage + 2]
        if stage == 0 and before == after:
            return None
        if self.shortcut == "zero_pad" and after >= before:
            return "zero_pad"
        return "projection"

    @property
    def block_type(self) -> type[nn.Module]:
        """The block class, where every stage has the same (see ``stage_block_type``)."""
        return BLOCKS[self.block]

    def stage_block_type(self, stage: int) -> type[nn.Module]:
        return BLOCKS[self.stage_blocks[stage]] if self.stage_blocks is not None else self.block_type

    @property
    def expansions(self) -> tuple[int, ...]:
        """Each stage's block output width / its ``channels``: 1 for basic blocks, 4 for bottlenecks."""
        return tuple(self.stage_block_type(stage).expansion for stage in range(len(self.layers)))

    @property
    def deformable_stages(self) -> tuple[int, ...]:
        if self.deformable is True:
            return tuple(range(2, len(self.layers) + 1))
        return self.deformable or ()

    def stage_mid_channels(self, stage: int) -> tuple[int, ...]:
        """Inner (3x3) width of every block of a 0-based stage."""
        if self.mid_channels is not None:
            return self.mid_channels[stage]
        if self.expansions[stage] == 1:  # the 3x3 is the block's first conv
            width = self.channels[stage] // self.block_reduce_first
        else:
            width = int(self.channels[stage] * (self.width_per_group / 64.0)) * self.groups
        return (width,) * self.layers[stage]

    def stage_first_channels(self, stage: int) -> tuple[int, ...]:
        """Width of every block's first conv in a 0-based stage: a bottleneck's 1x1, a basic block's 3x3."""
        if self.first_channels is not None:
            return self.first_channels[stage]
        if self.block == "res2net":
            return tuple(width * self.res2net_scale for width in self.stage_mid_channels(stage))
        if self.expansions[stage] == 1:
            return self.stage_mid_channels(stage)
        return tuple(width // self.block_reduce_first for width in self.stage_mid_channels(stage))

    def block_options(self) -> dict:
        """The options only one block kind takes, for every block of the network."""
        if self.block == "res2net":
            return dict(scale=self.res2net_scale)
        if self.block.startswith("sk_"):
            return dict(sk=dict(reduction=self.sk_reduction, divisor=self.sk_divisor, split_input=self.sk_split_input))
        return dict(radix=self.radix, avd_first=self.avd_first) if self.block == "resnest" else {}

    def stage_strides(self) -> list[tuple[int, int]]:
        """(stride, dilation) of each stage: where the output stride is reached, strides become dilations."""
        reduction = 1 if self.stem == "cifar" else 4
        dilation, strides = 1, []
        for stage in range(len(self.layers)):
            stride = 1 if stage == 0 else 2
            if reduction >= self.output_stride:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            strides.append((stride, dilation))
        return strides

    @property
    def nominal_stream_channels(self) -> tuple[int, ...]:
        """The stream's width after the stem and after each stage, unpruned: stem_channels, then
        channels * expansion."""
        return (self.stem_channels, *(c * expansion for c, expansion in zip(self.channels, self.expansions)))

    @property
    def built_stream_channels(self) -> tuple[int, ...]:
        """The stream's width after the stem and after each stage as built: ``stream_channels`` when
        they are given (a pruned network), the nominal widths otherwise."""
        return self.stream_channels or self.nominal_stream_channels

    @property
    def stem_out_channels(self) -> int:
        return self.built_stream_channels[0]

    @property
    def stage_out_channels(self) -> tuple[int, ...]:
        return self.built_stream_channels[1:]

    @property
    def preprocessing(self) -> Preprocessing:
        return CIFAR10 if self.stem == "cifar" else IMAGENET

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ResNet(nn.Module):
    """A residual network (He et al., CVPR 2016) and its descendants.

    Module names are torchvision's (``conv1, bn1, layer1..4, fc``), so state dicts load
    between the two. Like timm, every model has ``forward_features``, ``forward_head``,
    ``reset_classifier`` and a declared ``feature_info``.
    """

    def __init__(self, config: ResNetConfig, arch: str = "custom"):
        super().__init__()
        self.config = config
        self.arch = arch  # the registry name it was built from, saved with its weights
        self.preprocessing = config.preprocessing
        self.class_names: list[str] | None = None
        self.frozen_modules: list[nn.Module] = []  # see freeze()
        self.grad_checkpointing = False  # see set_grad_checkpointing()
        preact = config.block_type.preact

        if config.stem == "cifar":
            self.conv1 = nn.Conv2d(config.in_chans, config.stem_out_channels, 3, stride=1, padding=1, bias=False)
        elif config.stem_type == "plain":
            self.conv1 = nn.Conv2d(config.in_chans, config.stem_out_channels, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = deep_stem(config.in_chans, config.stem_width, config.stem_out_channels,
                                   tiered=config.stem_type == "deep_tiered", norm=config.norm)
        # A pre-activation network normalises inside its first block instead.
        self.bn1 = None if preact else norm_layer(config.norm, config.stem_out_channels)
        self.relu = activation_after(config.norm)
        self.maxpool = self._stem_pool() if config.stem == "imagenet" else None
        stem_stride = 1 if config.stem == "cifar" else 2

        # Where each stage's output lives, its width and its stride w.r.t. the input (as timm).
        self.feature_info: list[dict] = [dict(num_chs=config.stem_out_channels, reduction=stem_stride,
                                              module="conv1" if preact else "relu")]
        self.stage_names: list[str] = []
        total_blocks = sum(config.layers)
        block_index = 0
        in_channels = config.stem_out_channels
        reduction = stem_stride * (2 if self.maxpool is not None else 1)
        previous_dilation = 1
        for stage, (num_blocks, out_channels, (stride, dilation)) in enumerate(
                zip(config.layers, config.stage_out_channels, config.stage_strides())):
            reduction *= stride
            mids, firsts = config.stage_mid_channels(stage), config.stage_first_channels(stage)
            # Attention is sized by the nominal width, so a pruned net keeps its kernels (timm does too).
            attention_width = config.nominal_stream_channels[stage + 1]
            blocks = []
            for i in range(num_blocks):
                block_stride = stride if i == 0 else 1
                blocks.append(config.stage_block_type(stage)(
                    in_channels=in_channels,
                    mid_channels=mids[i],
                    out_channels=out_channels,
                    stride=block_stride,
                    shortcut=self._shortcut(config.entry_shortcut(stage) if i == 0 else None,
                                            in_channels, out_channels, block_stride, dilation, previous_dilation),
                    groups=config.groups,
                    stride_in_1x1=config.stride_in_1x1,
                    attention=attention_module(config.attention, attention_width, config.se_reduction),
                    deformable=stage + 1 in config.deformable_stages,
                    drop_path=config.drop_path_rate * block_index / max(total_blocks - 1, 1),
                    first_channels=firsts[i],
                    aa=config.aa,
                    norm=config.norm,
                    dilation=dilation,
                    first_dilation=previous_dilation,
                    **config.block_options(),
                ))
                in_channels, previous_dilation = out_channels, dilation
                block_index += 1
            name = f"layer{stage + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.feature_info.append(dict(num_chs=out_channels, module=name, reduction=reduction))

        # Pre-activation networks end with the BN-ReLU that no block applied to its output.
        self.final_bn = norm_layer(config.norm, in_channels) if preact else None
        self.num_features = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(in_channels, config.num_classes) if config.num_classes else nn.Identity()
        if config.weight_standardization:
            standardize_convolutions(self)
        self._init_weights()

    def _stem_pool(self) -> nn.Module:
        """The stem's /2 after its conv: a 3x3 max-pool (padding with zeros, with stem_pool_zero_padding),
        anti-aliased (a stride-1 max-pool, then the blur pool; or a 2x2 average pool) or, with
        replace_stem_pool, a strided 3x3 conv-BN-ReLU (timm's layouts)."""
        config, width = self.config, self.config.stem_out_channels
        if config.replace_stem_pool:
            aa = anti_alias(config.aa, 2, width)
            conv = nn.Conv2d(width, width, 3, stride=1 if aa else 2, padding=1, bias=False)
            return nn.Sequential(*(m for m in (conv, aa) if m is not None), norm_layer(config.norm, width),
                                 nn.ReLU(inplace=True))
        if config.aa == "blur":
            return nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), BlurPool(width, 2))
        if config.stem_pool_zero_padding:
            return nn.Sequential(nn.ConstantPad2d(1, 0.0), nn.MaxPool2d(3, stride=2))
        return anti_alias(config.aa, 2, width) or nn.MaxPool2d(3, stride=2, padding=1)

    def _shortcut(self, kind: str | None, in_channels: int, out_channels: int, stride: int, dilation: int,
                  previous_dilation: int) -> nn.Module | None:
        if kind is None:
            return None
        if kind == "zero_pad":
            return ZeroPadShortcut(in_channels, out_channels, stride)
        norm = [] if self.config.block_type.preact else [norm_layer(self.config.norm, out_channels)]
        if self.config.avg_down:
            # timm's layout: the pool (an identity at stride 1) is module 0, so the conv is downsample.1.
            if stride > 1:
                pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
            else:
                pool = SamePadAvgPool() if dilation > 1 else nn.Identity()
            return nn.Sequential(pool, conv1x1(in_channels, out_channels), *norm)
        # A wider kernel only where the shortcut strides or dilates (SENet-154's 3x3), with the dilation
        # the block's first conv keeps.
        kernel = self.config.down_kernel_size if stride > 1 or dilation > 1 else 1
        conv_dilation = previous_dilation if kernel > 1 else 1
        conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, bias=False, dilation=conv_dilation,
                         padding=((stride - 1) + conv_dilation * (kernel - 1)) // 2)
        return nn.Sequential(conv, *norm)

    def _init_weights(self) -> None:
        if next(self.parameters()).is_meta:
            return  # built on the meta device to count MACs or shapes: there are no values to set
        # He initialisation (fan_out, as torchvision) for every conv; BN starts as identity.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, DeformConv2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, DeformableConv3x3):
                module.reset_offsets()  # the loop above re-initialised the offset predictor
        if self.config.zero_init_residual:
            # Each residual branch then starts at zero and every block is an identity
            # (Goyal et al. 2017): about +0.2-0.3 top-1 on ImageNet.
            for stage in self.stages:
                for block in stage:
                    nn.init.zeros_(block.last_residual_layer.weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_stem_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The stem before its pool: feature 0 of ``features_only`` and ``forward_intermediates``."""
        x = self.conv1(x)
        return x if self.bn1 is None else self.relu(self.bn1(x))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem_activation(x)
        return x if self.maxpool is None else self.maxpool(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's
        name): less training memory for more time (resnet152, batch 16 at 224 on a CPU: 0.67x the
        peak memory, 1.55x the step; BENCHMARKS.md). BN running statistics are not stepped twice."""
        self.grad_checkpointing = enable

    def forward_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return stage(x)
        for block in stage:
            x = checkpointed(block, x)
        return x

    def forward_final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.final_bn is None else self.relu(self.final_bn(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = self.forward_stage(stage, x)
        return self.forward_final_norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's interface: the features and the maps at ``indices`` (0 the stem before its pool, 1..N the
        stages; an int n takes the last n, negative indices count from the end; None takes all).

        ``norm`` applies a pre-activation net's final BN-ReLU to the last stage's map; the returned
        features always have it, as ``forward_features``. ``stop_early`` runs no stage past the deepest
        index; ``intermediates_only`` returns the list alone.
        """
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt {output_fmt!r} is not available; ResNet feature maps are NCHW")
        taken = intermediate_indices(len(self.stage_names) + 1, indices)
        x = self.forward_stem_activation(x)
        intermediates = [x] if 0 in taken else []
        if self.maxpool is not None:
            x = self.maxpool(x)
        last = len(self.stages)
        stages = self.stages[:max(taken)] if stop_early else self.stages
        for index, stage in enumerate(stages, start=1):
            x = self.forward_stage(stage, x)
            if index in taken:
                intermediates.append(self.forward_final_norm(x) if norm and index == last else x)
        if intermediates_only:
            return intermediates
        return (self.forward_final_norm(x) if len(stages) == last else x), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def freeze(self, stages: int | None = None, batch_norm: bool = False) -> None:
        """Stop learning in the stem and the first ``stages`` stages, and/or in every BN layer.

        Frozen modules get no gradients and stay in eval mode through ``train()``, so their
        BN running statistics are kept too (the fine-tuning and detection practice).
        """
        if stages is not None and not 0 <= stages <= len(self.stage_names):
            raise ConfigError(f"cannot freeze {stages} stages: {self.arch} has {len(self.stage_names)}")
        frozen = stem_and_stages(self, stages) if stages is not None else []
        freeze_modules(self, frozen, batch_norm)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one (0 removes it: the model returns embeddings)."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.config = dataclasses.replace(self.config, num_classes=num_classes)


def intermediate_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's ``feature_take_indices``: None all ``count`` maps, an int the last n, a sequence as given
    (negative from the end), each checked."""
    valid = f"there are {count} intermediates, 0 (the stem) to {count - 1}"
    if indices is None:
        indices = count
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= count:
            raise ConfigError(f"cannot take the last {indices} intermediates: {valid}")
        return list(range(count - indices, count))
    taken = [count + i if isinstance(i, int) and i < 0 else i for i in indices]
    outside = [i for i in taken if not (isinstance(i, int) and 0 <= i < count)]
    if outside or not taken:
        raise ConfigError(f"intermediate indices {list(indices)!r} do not all exist: {valid}")
    return taken


def stem_and_stages(model: nn.Module, stages: int) -> list[nn.Module]:
    """What freezing the stem and the first ``stages`` stages covers, for a ResNet or its backbone.

    With every stage frozen, a pre-activation net's ``final_bn`` goes too: it normalises the last
    stage's output.
    """
    frozen = [m for m in (model.conv1, model.bn1) if m is not None] + model.stages[:stages]
    if stages == len(model.stage_names) and getattr(model, "final_bn", None) is not None:
        frozen.append(model.final_bn)
    return frozen
