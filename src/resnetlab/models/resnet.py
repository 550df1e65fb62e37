"""One ResNet class for the whole family; every variant is a field of ``ResNetConfig``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import DeformConv2d

from ..config import check_types
from ..errors import ConfigError
from ..preprocessing import CIFAR10, IMAGENET, Preprocessing
from .blocks import BLOCKS, DeformableConv3x3, ZeroPadShortcut, conv1x1, deep_stem
from .grad_checkpointing import checkpointed

STEMS = ("imagenet", "cifar")
STEM_TYPES = ("plain", "deep", "deep_tiered")
SHORTCUTS = ("projection", "zero_pad")
ATTENTIONS = (None, "se")


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that defines a ResNet architecture. Saved beside weights, so it must stay plain data."""

    block: str = "bottleneck"  # basic | bottleneck | preact_basic | preact_bottleneck
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
    shortcut: str = "projection"  # projection: 1x1 conv when shapes change (option B); zero_pad: option A
    groups: int = 1  # grouped 3x3 (ResNeXt cardinality)
    width_per_group: int = 64  # 3x3 width = channels * width_per_group / 64 * groups
    # Per-block inner widths, one tuple per stage; overrides groups/width_per_group (pruned networks).
    mid_channels: tuple[tuple[int, ...], ...] | None = None
    # The residual stream's width after the stem and after each stage; overrides stem_channels and
    # channels * expansion (pruned networks). The shortcuts keep the kinds those nominal widths give.
    stream_channels: tuple[int, ...] | None = None
    stride_in_1x1: bool = False  # True: original v1, stride on the first 1x1; False: v1.5
    attention: str | None = None  # None | "se"
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
        if not isinstance(self.deformable, bool):
            object.__setattr__(self, "deformable", tuple(self.deformable))
        self._validate()

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(message)

        if self.block not in BLOCKS:
            fail(f"unknown block {self.block!r}; choose one of {', '.join(BLOCKS)}")
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
            fail(f"unknown attention {self.attention!r}; choose None or 'se'")
        if not self.layers or len(self.layers) != len(self.channels):
            fail(f"layers {list(self.layers)} and channels {list(self.channels)} must list the same "
                 "number of stages (at least one)")
        if any(n < 1 for n in self.layers) or any(c < 1 for c in self.channels):
            fail("every stage needs at least one block and one channel")
        if self.block_type.expansion == 1 and (self.groups != 1 or self.width_per_group != 64):
            fail(f"{self.block} blocks support only groups=1 and width_per_group=64; "
                 "use a bottleneck block for ResNeXt or Wide ResNet")
        if self.groups < 1 or self.width_per_group < 1:
            fail("groups and width_per_group must be positive")
        if self.block_type.preact and self.attention is not None:
            fail("attention is not available for pre-activation blocks; use a post-activation block")
        if self.mid_channels is not None and (
                tuple(len(stage) for stage in self.mid_channels) != self.layers
                or not all(w >= 1 for stage in self.mid_channels for w in stage)):
            fail(f"mid_channels needs one positive whole width per block: {list(self.layers)} blocks per stage")
        if self.stream_channels is not None:
            self._validate_stream_channels(fail)
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
        return BLOCKS[self.block]

    @property
    def deformable_stages(self) -> tuple[int, ...]:
        if self.deformable is True:
            return tuple(range(2, len(self.layers) + 1))
        return self.deformable or ()

    def stage_mid_channels(self, stage: int) -> tuple[int, ...]:
        """Inner (3x3) width of every block of a 0-based stage."""
        if self.mid_channels is not None:
            return self.mid_channels[stage]
        if self.block_type.expansion == 1:
            width = self.channels[stage]
        else:
            width = int(self.channels[stage] * (self.width_per_group / 64.0)) * self.groups
        return (width,) * self.layers[stage]

    @property
    def nominal_stream_channels(self) -> tuple[int, ...]:
        """The stream's width after the stem and after each stage, unpruned: stem_channels, then
        channels * expansion."""
        return (self.stem_channels, *(c * self.block_type.expansion for c in self.channels))

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
                                   tiered=config.stem_type == "deep_tiered")
        # A pre-activation network normalises inside its first block instead.
        self.bn1 = None if preact else nn.BatchNorm2d(config.stem_out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if config.stem == "imagenet" else None
        stem_stride = 1 if config.stem == "cifar" else 2

        # Where each stage's output lives, its width and its stride w.r.t. the input (as timm).
        self.feature_info: list[dict] = [dict(num_chs=config.stem_out_channels, reduction=stem_stride,
                                              module="conv1" if preact else "relu")]
        self.stage_names: list[str] = []
        total_blocks = sum(config.layers)
        block_index = 0
        in_channels = config.stem_out_channels
        reduction = stem_stride * (2 if self.maxpool is not None else 1)
        for stage, (num_blocks, out_channels) in enumerate(zip(config.layers, config.stage_out_channels)):
            stride = 1 if stage == 0 else 2
            reduction *= stride
            mids = config.stage_mid_channels(stage)
            blocks = []
            for i in range(num_blocks):
                block_stride = stride if i == 0 else 1
                blocks.append(config.block_type(
                    in_channels=in_channels,
                    mid_channels=mids[i],
                    out_channels=out_channels,
                    stride=block_stride,
                    shortcut=self._shortcut(config.entry_shortcut(stage) if i == 0 else None,
                                            in_channels, out_channels, block_stride),
                    groups=config.groups,
                    stride_in_1x1=config.stride_in_1x1,
                    attention=config.attention,
                    deformable=stage + 1 in config.deformable_stages,
                    drop_path=config.drop_path_rate * block_index / max(total_blocks - 1, 1),
                ))
                in_channels = out_channels
                block_index += 1
            name = f"layer{stage + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.feature_info.append(dict(num_chs=out_channels, module=name, reduction=reduction))

        # Pre-activation networks end with the BN-ReLU that no block applied to its output.
        self.final_bn = nn.BatchNorm2d(in_channels) if preact else None
        self.num_features = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(in_channels, config.num_classes) if config.num_classes else nn.Identity()
        self._init_weights()

    def _shortcut(self, kind: str | None, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
        if kind is None:
            return None
        if kind == "zero_pad":
            return ZeroPadShortcut(in_channels, out_channels, stride)
        norm = [] if self.config.block_type.preact else [nn.BatchNorm2d(out_channels)]
        if self.config.avg_down:
            # timm's layout: the pool (an identity at stride 1) is module 0, so the conv is downsample.1.
            pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            return nn.Sequential(pool, conv1x1(in_channels, out_channels), *norm)
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), *norm)

    def _init_weights(self) -> None:
        if next(self.parameters()).is_meta:
            return  # built on the meta device to count MACs or shapes: there are no values to set
        # He initialisation (fan_out, as torchvision) for every conv; BN starts as identity.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, DeformConv2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
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

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        return x

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
        if batch_norm:
            frozen += [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        for module in frozen:
            module.requires_grad_(False)
        self.frozen_modules = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one (0 removes it: the model returns embeddings)."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.config = dataclasses.replace(self.config, num_classes=num_classes)


def stem_and_stages(model: nn.Module, stages: int) -> list[nn.Module]:
    """What freezing the stem and the first ``stages`` stages covers, for a ResNet or its backbone.

    With every stage frozen, a pre-activation net's ``final_bn`` goes too: it normalises the last
    stage's output.
    """
    frozen = [m for m in (model.conv1, model.bn1) if m is not None] + model.stages[:stages]
    if stages == len(model.stage_names) and getattr(model, "final_bn", None) is not None:
        frozen.append(model.final_bn)
    return frozen
