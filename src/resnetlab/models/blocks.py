"""Residual units and the pieces they are built from.

Module names follow torchvision (``conv1``, ``bn1``, ``downsample``, ...) so that state
dicts are interchangeable with torchvision and timm. Every block takes the same keyword
arguments; the ResNet computes all widths up front and passes them in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d, StochasticDepth


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
            deformable: bool = False) -> nn.Module:
    if deformable:
        return DeformableConv3x3(in_channels, out_channels, stride=stride, groups=groups)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def deep_stem(in_channels: int, width: int, out_channels: int, tiered: bool = False) -> nn.Sequential:
    """Three 3x3 convolutions in place of the 7x7, the first at stride 2 (ResNet-C, He et al. 2019).

    ``tiered`` narrows the first to 3/4 of ``width`` (timm's ResNet-T). The last conv's BN and ReLU
    are the ResNet's ``bn1`` and ``relu``; module indices are timm's (conv1.0, conv1.1, conv1.3, ...).
    """
    first = 3 * (width // 4) if tiered else width
    return nn.Sequential(
        nn.Conv2d(in_channels, first, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(first), nn.ReLU(inplace=True),
        nn.Conv2d(first, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, out_channels, 3, padding=1, bias=False))


class DeformableConv3x3(DeformConv2d):
    """3x3 deformable convolution (Dai et al., ICCV 2017) that predicts its own sampling offsets.

    The offsets start at zero, so a fresh layer samples exactly like a plain 3x3 convolution
    and pretrained 3x3 weights keep their meaning (``weight`` has the plain conv's shape).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, stride=stride, padding=1)
        self.reset_offsets()

    def reset_offsets(self) -> None:
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x, self.offset(x))


class SqueezeExcite(nn.Module):
    """Channel attention of Hu et al. (CVPR 2018). Names and widths match timm's ``SEModule``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # timm rounds the bottleneck width to a multiple of 8; matching it keeps weights loadable.
        reduced = max(8, int(channels / reduction + 4) // 8 * 8)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


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


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR ResNets)."""

    expansion = 1
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: str | None = None, deformable: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = conv3x3(in_channels, mid_channels, stride, deformable=deformable)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(mid_channels, out_channels, deformable=deformable)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels) if attention == "se" else None
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += identity  # in place, as torchvision and timm: one activation-sized tensor fewer
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50 and deeper, ResNeXt, Wide ResNet).

    The stride sits on the 3x3 convolution (ResNet v1.5, as torchvision and NVIDIA do; about
    +0.5 top-1 over v1). ``stride_in_1x1=True`` moves it to the first 1x1 as in the original paper.
    """

    expansion = 4
    preact = False

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: str | None = None, deformable: bool = False, drop_path: float = 0.0):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, mid_channels, stride_1x1)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = conv3x3(mid_channels, mid_channels, stride_3x3, groups, deformable)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = conv1x1(mid_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out_channels) if attention == "se" else None
        self.downsample = shortcut
        self.drop_path = _drop_path(drop_path)

    @property
    def last_residual_layer(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += identity  # in place, as torchvision and timm: one activation-sized tensor fewer
        return self.relu(out)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv ordering of He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016).

    The shortcut stays a clean identity; when it must project, it takes the pre-activated input
    (the paper's treatment of the first unit of a stage). Same layout as timm's ``PreActBasic``.
    """

    expansion = 1
    preact = True

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 shortcut: nn.Module | None = None, groups: int = 1, stride_in_1x1: bool = False,
                 attention: str | None = None, deformable: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, mid_channels, stride, deformable=deformable)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv2 = conv3x3(mid_channels, out_channels, deformable=deformable)
        self.relu = nn.ReLU(inplace=True)
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
                 attention: str | None = None, deformable: bool = False, drop_path: float = 0.0):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, mid_channels, stride_1x1)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv2 = conv3x3(mid_channels, mid_channels, stride_3x3, groups, deformable)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv3 = conv1x1(mid_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)
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


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}
