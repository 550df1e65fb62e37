"""Residual units and the pieces they are built from.

Module names follow torchvision (``conv1``, ``bn1``, ``downsample``, ...) so that state
dicts are interchangeable with torchvision and timm. Every block takes the same keyword
arguments; the ResNet computes all widths up front and passes them in:

- ``mid_channels`` is the 3x3's width; ``first_channels`` a bottleneck's first 1x1 width where it
  differs (SENet-154, pruned nets);
- ``attention`` a module applied to the branch's output (SE, ECA);
- ``aa`` moves a stride onto an anti-aliasing pool after the strided conv's activation (timm's
  ``aa_layer``);
- ``dilation`` is the stage's, ``first_dilation`` the one the block's first 3x3 keeps from the stage
  before (output_stride 8 or 16).

A few options belong to one block kind only (Res2Net's ``scale``, ResNeSt's ``radix`` and
``avd_first``, the selective kernel's ``sk``): ``ResNetConfig.block_options`` passes them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d, StochasticDepth

from .norms import activation_after, norm_layer


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
            deformable: bool = False, dilation: int = 1) -> nn.Module:
    if deformable:
        return DeformableConv3x3(in_channels, out_channels, stride=stride, groups=groups, dilation=dilation)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
                     groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def deep_stem(in_channels: int, width: int, out_channels: int, tiered: bool = False,
              norm: str = "batch") -> nn.Sequential:
    """Three 3x3 convolutions in place of the 7x7, the first at stride 2 (ResNet-C, He et al. 2019).

    ``tiered`` narrows the first to 3/4 of ``width`` (timm's ResNet-T). The last conv's BN and ReLU
    are the ResNet's ``bn1`` and ``relu``; module indices are timm's (conv1.0, conv1.1, conv1.3, ...).
    """
    first = 3 * (width // 4) if tiered else width
    return nn.Sequential(
        nn.Conv2d(in_channels, first, 3, stride=2, padding=1, bias=False), norm_layer(norm, first),
        activation_after(norm),
        nn.Conv2d(first, width, 3, padding=1, bias=False), norm_layer(norm, width), activation_after(norm),
        nn.Conv2d(width, out_channels, 3, padding=1, bias=False))


class DeformableConv3x3(DeformConv2d):
    """3x3 deformable convolution (Dai et al., ICCV 2017) that predicts its own sampling offsets.

    The offsets start at zero, so a fresh layer samples exactly like a plain 3x3 convolution
    and pretrained 3x3 weights keep their meaning (``weight`` has the plain conv's shape).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, dilation: int = 1):
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
                         groups=groups, bias=False)
        self.offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, stride=stride, padding=dilation, dilation=dilation)
        self.reset_offsets()

    def reset_offsets(self) -> None:
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x, self.offset(x))


def round_to_multiple(value: float, divisor: int, minimum: int | None = None, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: ``value`` to the nearest multiple of ``divisor`` (at least ``minimum``,
    else one divisor), one more divisor where that fell below ``round_limit`` x ``value``. Attention
    widths follow it, so timm's weights load."""
    rounded = max(minimum or divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


class SqueezeExcite(nn.Module):
    """Channel attention of Hu et al. (CVPR 2018). Names and widths match timm's ``SEModule``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        reduced = round_to_multiple(channels / reduction, 8, round_limit=0.0)  # timm's SEModule never rounds up
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al., CVPR 2020): channel attention from a 1-D convolution across the pooled
    channels, in place of SE's two fully connected layers. Names and kernel sizes match timm's ``EcaModule``."""

    def __init__(self, channels: int):
        super().__init__()
        # The paper's adaptive kernel: the odd size nearest (log2(C) + 1) / 2, at least 3.
        size = int(abs(math.log2(channels) + 1) / 2)
        size = max(size if size % 2 else size + 1, 3)
        self.conv = nn.Conv1d(1, 1, size, padding=(size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3)).view(x.shape[0], 1, -1)
        return x * self.conv(pooled).sigmoid().view(x.shape[0], -1, 1, 1)


ATTENTIONS = (None, "se", "eca")


def attention_module(kind: str | None, channels: int, se_reduction: int = 16) -> nn.Module | None:
    if kind == "se":
        return SqueezeExcite(channels, se_reduction)
    return EfficientChannelAttention(channels) if kind == "eca" else None


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang, ICML 2019): a 3x3 binomial blur, then every ``stride``-th pixel,
    as timm's ``BlurPool2d`` (reflect padding, a depthwise conv). The filter is made in ``forward``
    rather than kept as a buffer: nothing to save, and nothing left unset when a model is built on the
    meta device and filled from a state dict."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        self.channels, self.stride = channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
        weight = (taps[:, None] * taps[None, :]).expand(self.channels, 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight, stride=self.stride, groups=self.channels)


class SamePadAvgPool(nn.Module):
    """A 2x2 average at stride 1 with the missing row and column zero-padded: timm's ``AvgPool2dSame``
    in a ResNet-D shortcut whose stride became a dilation (output_stride 8 or 16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, stride=1)


ANTI_ALIASING = (None, "blur", "avg")


def anti_alias(kind: str | None, stride: int, channels: int) -> nn.Module | None:
    """The pool that takes a strided conv's stride when ``kind`` is set (the conv then runs at stride 1):
    a blur pool, or a ``stride``-wide average pool (timm's ``aa_layer=nn.AvgPool2d``)."""
    if kind == "blur":
        return BlurPool(channels, stride)
    # Rounding up, as every other strided layer here: the same as timm's pool on even maps, and on odd
    # ones the branch still meets its shortcut (timm's shapes differ there and the sum fails).
    return nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if kind == "avg" and stride > 1 else None


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut of the CIFAR ResNets (He et al. 2016, option A).

    Subsamples spatially by taking every ``stride``-th pixel and zero-pads the new channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def _drop_path(rate: float) -> nn.Module | None:
    # No module at rate 0, so the plain network pays nothing for the option.
    return StochasticDepth(rate, mode="row") if rate > 0 else None


def _add_shortcut(block: nn.Module, out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """The end of every post-activation block: its attention, stochastic depth, the shortcut, the ReLU."""
    if block.se is not None:
        out = block.se(out)
    if block.drop_path is not None:
        out = block.drop_path(out)
    out += identity  # in place, as torchvision and timm: one activation-sized tensor fewer
    return block.relu(out)


def _uses_anti_aliasing(aa: str | None, stride: int, dilation: int, first_dilation: int) -> bool:
    return aa is not None and (stride > 1 or first_dilation != dilation)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR ResNets). See the module docstring."""

    expansion = 1
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None):
        super().__init__()
        first_dilation = first_dilation or dilation
        use_aa = _uses_anti_aliasing(aa, stride, dilation, first_dilation)
        self.conv1 = conv3x3(in_channels, mid_channels, 1 if use_aa else stride, deformable=deformable,
                             dilation=first_dilation)
        self.bn1 = norm_layer(norm, mid_channels)
        self.relu = nn.ReLU(inplace=True)
        self.aa = anti_alias(aa, stride, mid_channels) if use_aa else None
        self.conv2 = conv3x3(mid_channels, out_channels, deformable=deformable, dilation=dilation)
        self.bn2 = norm_layer(norm, out_channels)
        self.se = attention
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.aa is not None:
            out = self.aa(out)
        return _add_shortcut(self, self.bn2(self.conv2(out)), identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50 and deeper, ResNeXt, Wide ResNet).

    The stride sits on the 3x3 convolution (ResNet v1.5, as torchvision and NVIDIA do; about
    +0.5 top-1 over v1). ``stride_in_1x1=True`` moves it to the first 1x1 as in the original paper.
    See the module docstring for the rest.
    """

    expansion = 4
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None):
        super().__init__()
        first_channels = first_channels or mid_channels
        first_dilation = first_dilation or dilation
        use_aa = _uses_anti_aliasing(aa, stride, dilation, first_dilation)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, 1 if use_aa else stride)
        self.conv1 = conv1x1(in_channels, first_channels, stride_1x1)
        self.bn1 = norm_layer(norm, first_channels)
        self.conv2 = conv3x3(first_channels, mid_channels, stride_3x3, groups, deformable, first_dilation)
        self.bn2 = norm_layer(norm, mid_channels)
        self.aa = anti_alias(aa, stride, mid_channels) if use_aa else None
        self.conv3 = conv1x1(mid_channels, out_channels)
        self.bn3 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = attention
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.aa is not None:
            out = self.aa(out)
        return _add_shortcut(self, self.bn3(self.conv3(out)), identity)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv ordering of He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016).

    The shortcut stays a clean identity; when it must project, it takes the pre-activated input
    (the paper's treatment of the first unit of a stage). Same layout as timm's ``PreActBasic``.
    """

    expansion = 1
    preact = True

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None):
        super().__init__()
        first_dilation = first_dilation or dilation
        self.bn1 = norm_layer(norm, in_channels)
        self.conv1 = conv3x3(in_channels, mid_channels, stride, deformable=deformable, dilation=first_dilation)
        self.bn2 = norm_layer(norm, mid_channels)
        self.conv2 = conv3x3(mid_channels, out_channels, deformable=deformable, dilation=dilation)
        self.relu = activation_after(norm)  # nothing after a self-activating norm
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.conv2  # no norm after the last conv in v2: zero it instead, as timm does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += identity
        return out


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (ResNet v2, ECCV 2016); same layout as timm's ``PreActBottleneck``."""

    expansion = 4
    preact = True

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None):
        super().__init__()
        first_dilation = first_dilation or dilation
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = norm_layer(norm, in_channels)
        self.conv1 = conv1x1(in_channels, mid_channels, stride_1x1)
        self.bn2 = norm_layer(norm, mid_channels)
        self.conv2 = conv3x3(mid_channels, mid_channels, stride_3x3, groups, deformable, first_dilation)
        self.bn3 = norm_layer(norm, mid_channels)
        self.conv3 = conv1x1(mid_channels, out_channels)
        self.relu = activation_after(norm)  # nothing after a self-activating norm
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += identity
        return out


class Res2NetBottleneck(nn.Module):
    """The hierarchical bottleneck of Res2Net (Gao et al., TPAMI 2021): the first 1x1's output splits into
    ``scale`` groups of ``mid_channels``; each 3x3 sees its split plus the previous 3x3's output, so the
    block mixes several receptive fields. Layout of timm's ``Bottle2neck`` (``convs.N``, ``bns.N``). A
    stage's first block convolves every split on its own and average-pools the last one (the original's
    "stage" mode). ``scale`` is its own option (``ResNetConfig.block_options``); see the module docstring."""

    expansion = 4
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None, scale: int = 4):
        super().__init__()
        first_dilation = first_dilation or dilation
        self.width, self.scale = mid_channels, scale
        first_channels = mid_channels * scale
        self.is_first = stride > 1 or shortcut is not None
        self.conv1 = conv1x1(in_channels, first_channels)
        self.bn1 = norm_layer(norm, first_channels)
        self.convs = nn.ModuleList(conv3x3(mid_channels, mid_channels, stride, groups, dilation=first_dilation)
                                   for _ in range(max(1, self.scale - 1)))
        self.bns = nn.ModuleList(norm_layer(norm, mid_channels) for _ in range(max(1, self.scale - 1)))
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if self.is_first else None
        self.conv3 = conv1x1(first_channels, out_channels)
        self.bn3 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = attention
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        splits = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, 1)
        outputs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            split = splits[i] if i == 0 or self.is_first else split + splits[i]
            split = self.relu(bn(conv(split)))
            outputs.append(split)
        if self.scale > 1:
            outputs.append(splits[-1] if self.pool is None else self.pool(splits[-1]))
        return _add_shortcut(self, self.bn3(self.conv3(torch.cat(outputs, 1))), identity)


class SplitAttention(nn.Module):
    """Split attention of ResNeSt (Zhang et al., CVPR 2022 workshops): the grouped 3x3 runs ``radix``
    times as wide, a softmax over the radix splits (per group; a sigmoid when radix is 1) weighs them
    from the pooled sum. Names and widths of timm's ``SplitAttn``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, radix: int = 2,
                 dilation: int = 1, norm: str = "batch"):
        super().__init__()
        self.radix, self.groups = radix, groups
        attention = round_to_multiple(in_channels * radix / 4, 8, minimum=32)  # a quarter of the radix-wide input
        self.conv = nn.Conv2d(in_channels, out_channels * radix, 3, stride, padding=dilation, dilation=dilation,
                              groups=groups * radix, bias=False)
        self.bn0 = norm_layer(norm, out_channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, attention, 1, groups=groups)
        self.bn1 = norm_layer(norm, attention)
        self.fc2 = nn.Conv2d(attention, out_channels * radix, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.conv(x)))
        batch = x.shape[0]
        if self.radix > 1:
            x = x.reshape(batch, self.radix, x.shape[1] // self.radix, x.shape[2], x.shape[3])
            pooled = x.sum(dim=1).mean((2, 3), keepdim=True)
        else:
            pooled = x.mean((2, 3), keepdim=True)
        logits = self.fc2(self.relu(self.bn1(self.fc1(pooled))))
        if self.radix == 1:
            return x * logits.sigmoid()
        weights = logits.view(batch, self.groups, self.radix, -1).transpose(1, 2).softmax(dim=1)
        return (x * weights.reshape(batch, self.radix, -1, 1, 1)).sum(dim=1)


class ResNeStBottleneck(nn.Module):
    """The ResNeSt bottleneck: split attention as its 3x3, and a strided block's stride on a 3x3 average
    pool after it (before it with ``avd_first``), as timm's ``ResNestBottleneck``. ``radix`` and
    ``avd_first`` are its own options (``ResNetConfig.block_options``); see the module docstring."""

    expansion = 4
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None, radix: int = 2, avd_first: bool = False):
        super().__init__()
        first_dilation = first_dilation or dilation
        pool = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else None
        self.conv1 = conv1x1(in_channels, mid_channels)
        self.bn1 = norm_layer(norm, mid_channels)
        self.relu = nn.ReLU(inplace=True)
        self.avd_first = pool if avd_first else None
        self.conv2 = SplitAttention(mid_channels, mid_channels, groups=groups, radix=radix,
                                    dilation=first_dilation, norm=norm)
        self.avd_last = None if avd_first else pool
        self.conv3 = conv1x1(mid_channels, out_channels)
        self.bn3 = norm_layer(norm, out_channels)
        self.se = attention  # always None: ResNetConfig refuses attention on top of split attention
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.avd_first is not None:
            out = self.avd_first(out)
        out = self.conv2(out)
        if self.avd_last is not None:
            out = self.avd_last(out)
        return _add_shortcut(self, self.bn3(self.conv3(out)), identity)


class ConvNorm(nn.Module):
    """A conv, its norm and (``act``) a ReLU, under timm's ``ConvNormAct`` names (``conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, norm: str = "batch", act: bool = True):
        super().__init__()
        padding = ((stride - 1) + dilation * (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        self.bn = norm_layer(norm, out_channels)
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.act is None else self.act(x)


class SelectiveKernel(nn.Module):
    """Selective kernel convolution (Li et al., CVPR 2019): a 3x3 and a dilated 3x3 (a 5x5's field) path,
    mixed per channel by a softmax from their pooled sum. With ``split_input`` each path reads half the
    input channels (timm's variant, fewer parameters). Names and widths of timm's ``SelectiveKernel``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, dilation: int = 1,
                 reduction: int = 16, divisor: int = 8, split_input: bool = True, norm: str = "batch"):
        super().__init__()
        self.split = in_channels // 2 if split_input else None
        path_in = self.split or in_channels
        self.paths = nn.ModuleList(ConvNorm(path_in, out_channels, 3, stride, min(out_channels, groups), d, norm)
                                   for d in (dilation, 2 * dilation))
        attention = round_to_multiple(out_channels / reduction, divisor)
        self.attn = SelectiveKernelAttention(out_channels, attention, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = torch.split(x, self.split, 1) if self.split else (x, x)
        paths = torch.stack([path(inputs[i]) for i, path in enumerate(self.paths)], dim=1)  # fx traces indexing
        return (paths * self.attn(paths)).sum(dim=1)


class SelectiveKernelAttention(nn.Module):
    """The softmax over a selective kernel's two paths, from their pooled sum."""

    def __init__(self, channels: int, attention_channels: int, norm: str = "batch"):
        super().__init__()
        self.fc_reduce = nn.Conv2d(channels, attention_channels, 1, bias=False)
        self.bn = norm_layer(norm, attention_channels)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(attention_channels, channels * 2, 1, bias=False)

    def forward(self, paths: torch.Tensor) -> torch.Tensor:
        logits = self.fc_select(self.act(self.bn(self.fc_reduce(paths.sum(1).mean((2, 3), keepdim=True)))))
        return logits.view(logits.shape[0], 2, -1, 1, 1).softmax(dim=1)


class SelectiveKernelBasicBlock(nn.Module):
    """timm's ``SelectiveKernelBasic``: a selective kernel conv, then a 3x3. See the module docstring; the
    selective kernel's ``reduction``, ``divisor`` and ``split_input`` come as ``sk`` (``block_options``)."""

    expansion = 1
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None, sk: dict | None = None):
        super().__init__()
        self.conv1 = SelectiveKernel(in_channels, mid_channels, stride, dilation=first_dilation or dilation, norm=norm,
                                     **(sk or {}))
        self.conv2 = ConvNorm(mid_channels, out_channels, 3, dilation=dilation, norm=norm, act=False)
        self.se = attention
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.conv2.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return _add_shortcut(self, self.conv2(self.conv1(x)), identity)


class SelectiveKernelBottleneck(nn.Module):
    """timm's ``SelectiveKernelBottleneck``: 1x1, a selective kernel conv in place of the 3x3, 1x1."""

    expansion = 4
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: nn.Module | None = None, deformable: bool = False, drop_path: float = 0.0,
                 first_channels: int | None = None, aa: str | None = None, norm: str = "batch",
                 dilation: int = 1, first_dilation: int | None = None, sk: dict | None = None):
        super().__init__()
        first_channels = first_channels or mid_channels
        self.conv1 = ConvNorm(in_channels, first_channels, 1, norm=norm)
        self.conv2 = SelectiveKernel(first_channels, mid_channels, stride, groups, first_dilation or dilation,
                                     norm=norm, **(sk or {}))
        self.conv3 = ConvNorm(mid_channels, out_channels, 1, norm=norm, act=False)
        self.se = attention
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return _add_shortcut(self, self.conv3(self.conv2(self.conv1(x))), identity)


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
    "res2net": Res2NetBottleneck,
    "resnest": ResNeStBottleneck,
    "sk_basic": SelectiveKernelBasicBlock,
    "sk_bottleneck": SelectiveKernelBottleneck,
}
