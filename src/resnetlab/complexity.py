"""Parameters, multiply-accumulates and the per-stage table of a model.

Units, honestly labelled: a MAC is one multiply-add; FLOPs = 2 x MACs. torchvision's
"GFLOPS" column (4.09 for resnet50 at 224) counts MACs. Only convolutions and the
classifier are counted (BN, ReLU, pooling and the residual adds are <1% of the total),
which is the convention of torchvision, fvcore and the papers.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import DeformConv2d

from .models.blocks import (BlurPool, ConvNorm, Res2NetBottleneck, ResNeStBottleneck, SelectiveKernel, SplitAttention,
                            SqueezeExcite)
from .models.hrnet import HRNet
from .models.norms import EvoNormS0, FilterResponseNorm, StandardizedConv2d
from .models.resnet import ResNet

_COUNTED = (nn.Conv2d, DeformConv2d, nn.Linear)


def _module_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Each output element of a convolution sums in_channels / groups x kh x kw products; a
    deformable one is counted like the plain convolution it generalises (its bilinear sampling
    is not a MAC, its offset convolution is a module of its own)."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def input_tensor(model: ResNet | HRNet, input_size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """A single zero image of the model's expected size (or ``input_size``) on the model's device."""
    size = input_size or model.preprocessing.input_size
    height, width = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    return torch.zeros(1, model.config.in_chans, height, width, device=device)


def count_macs(model: ResNet | HRNet, input_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass on one image. Works on a meta-device model."""
    return sum(row.macs for row in stage_table(model, input_size))


@dataclass
class StageRow:
    name: str
    structure: str
    blocks: int
    in_channels: int
    out_channels: int
    output_size: tuple[int, int]
    params: int
    macs: int


def stage_table(model: ResNet | HRNet, input_size: int | tuple[int, int] | None = None) -> list[StageRow]:
    """The rows of the architecture table of the ResNet paper: stem, each stage, head. An HRNet's
    stages run several branches: their channels are the branches' together, their size the largest."""
    parts = _hrnet_parts(model) if isinstance(model, HRNet) else _resnet_parts(model)
    rows = []
    was_training = model.training
    model.eval()
    x = input_tensor(model, input_size)
    # Forward hooks on the counted modules, not torch's FlopCounterMode: that intercepts every op,
    # and made each count 2x slower on the meta device (prune's width search counts dozens of nets).
    counted: list[int] = []  # the MACs of each counted module's call, in order
    hooks = [module.register_forward_hook(lambda module, _, output: counted.append(_module_macs(module, output)))
             for module in model.modules() if isinstance(module, _COUNTED)]
    try:
        with torch.no_grad(), _batch_norm_skipped_on_meta(model, x):
            for name, run, modules, structure, blocks in parts:
                in_channels, first = _channels(x), len(counted)
                x = run(x)
                largest = x[0] if isinstance(x, list) else x
                rows.append(StageRow(
                    name=name, structure=structure, blocks=blocks, in_channels=in_channels,
                    out_channels=_channels(x), output_size=tuple(largest.shape[2:]) if largest.ndim == 4 else (1, 1),
                    params=sum(count_parameters(m) for m in modules if m is not None),
                    macs=sum(counted[first:]),
                ))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return rows


def _resnet_parts(model: ResNet) -> list[tuple]:
    # (row name, how to run it, the modules whose parameters it owns, structure, blocks)
    parts = [("stem", model.forward_stem, [model.conv1, model.bn1, model.maxpool], _stem_structure(model), 1)]
    for name, stage in zip(model.stage_names, model.stages):
        parts.append((name, stage, [stage], _block_structure(stage[0]), len(stage)))
    parts.append(("head", lambda x: model.forward_head(model.forward_final_norm(x)),
                  [model.final_bn, model.fc], _head_structure(model), 1))
    return parts


def _hrnet_parts(model: HRNet) -> list[tuple]:
    stem = "; ".join(_conv_text(conv) for conv in (model.conv1, model.conv2))
    parts = [("stem", model.forward_stem, [model.conv1, model.bn1, model.conv2, model.bn2], stem, 1),
             ("layer1", model.forward_layer1, [model.layer1], _block_structure(model.layer1[0]),
              model.config.layers[0])]
    for name, transition, stage, blocks in zip(model.stage_names, model.transitions, model.stages,
                                               model.config.layers[1:]):
        widths = "/".join(str(branch[0].conv1.out_channels) for branch in stage[0].branches)
        structure = f"{len(stage)} x (branches {widths} wide, {len(stage[0].branches[0])} basic blocks each; fused)"
        parts.append((name, functools.partial(model.forward_stage, transition, stage), [transition, stage],
                      structure, blocks))
    widened = "/".join(str(incre[0].conv3.out_channels) for incre in model.incre_modules)
    classes = model.config.num_classes
    head = (f"bottlenecks to {widened}, merged by 3x3/2 convs; 1x1, {model.num_features}; avg-pool"
            + (f", fc {model.num_features}->{classes}" if classes else ""))
    parts.append(("head", lambda branches: model.forward_head(model.forward_merge(model.forward_widen(branches))),
                  [model.incre_modules, model.downsamp_modules, model.final_layer, model.classifier], head, 1))
    return parts


def _channels(x: torch.Tensor | list[torch.Tensor]) -> int:
    return sum(branch.shape[1] for branch in x) if isinstance(x, list) else x.shape[1]


@contextlib.contextmanager
def _batch_norm_skipped_on_meta(model: nn.Module, x: torch.Tensor):
    """On the meta device only shapes flow, and batch norm keeps them: skip it there. Its meta
    kernel is a Python decomposition, about half of each count (prune's width search makes dozens)."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)] if x.is_meta else []
    for norm in norms:
        norm.forward = _same_tensor  # an instance attribute: shadows BatchNorm2d.forward until deleted
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _same_tensor(x: torch.Tensor) -> torch.Tensor:
    return x


def _conv_text(conv: nn.Module) -> str:
    k = conv.kernel_size[0]
    text = f"{k}x{k}, {conv.out_channels}"
    if conv.groups > 1:
        text += f", {conv.groups} groups"
    if isinstance(conv, DeformConv2d):
        text += ", deformable"
    if conv.stride[0] > 1:
        text += f", /{conv.stride[0]}"
    return text


def _stem_structure(model: ResNet) -> str:
    convs = [module for module in model.conv1.modules() if isinstance(module, nn.Conv2d)]  # a deep stem has 3
    text = "; ".join(_conv_text(conv) for conv in convs)
    config = model.config
    if model.maxpool is None:
        return text
    if config.replace_stem_pool:
        pool = "conv 3x3" + (f", {config.aa} pool" if config.aa else "")
    else:
        pool = {None: "max-pool 3x3", "blur": "max-pool 3x3, blur pool", "avg": "avg-pool 2x2"}[config.aa]
        pool += " (zero padding)" if config.stem_pool_zero_padding else ""
    return f"{text}; {pool}, /2"


def _norm_text(norm: nn.Module) -> str:
    """A norm and the activation after it, in a structure column."""
    if isinstance(norm, nn.GroupNorm):
        return "GN-ReLU"
    if isinstance(norm, EvoNormS0):
        return "EvoNorm-S0"
    return "FRN-TLU" if isinstance(norm, FilterResponseNorm) else "BN-ReLU"


def _selective_kernel_text(kernel: SelectiveKernel) -> str:
    return "selective kernel (" + " | ".join(f"{_conv_text(path.conv)}, dilation {path.conv.dilation[0]}"
                                             for path in kernel.paths) + ")"


def _block_structure(block: nn.Module) -> str:
    convs = [getattr(block, name) for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
    texts = [_selective_kernel_text(conv) if isinstance(conv, SelectiveKernel)
             else _conv_text(conv.conv if isinstance(conv, (SplitAttention, ConvNorm)) else conv) for conv in convs]
    if isinstance(block, Res2NetBottleneck):
        texts.insert(1, f"{len(block.convs)} x {_conv_text(block.convs[0])}")
    if isinstance(block, ResNeStBottleneck):
        texts[1] += f", split attention (radix {block.conv2.radix})"
    text = "[" + "; ".join(texts) + "]"
    if block.preact:
        norm = "" if isinstance(block.bn1, nn.BatchNorm2d) else f" {_norm_text(block.bn1)}"
        standardised = " weight-std" if isinstance(block.conv1, StandardizedConv2d) else ""
        text = f"pre-act{norm}{standardised} {text}"
    if getattr(block, "aa", None) is not None:
        text += f" + {'blur' if isinstance(block.aa, BlurPool) else 'avg'} pool /2"
    if getattr(block, "se", None) is not None:
        text += " + SE" if isinstance(block.se, SqueezeExcite) else " + ECA"
    return text


def _head_structure(model: ResNet) -> str:
    prefix = f"{_norm_text(model.final_bn)}, " if model.final_bn is not None else ""
    classes = model.config.num_classes
    return prefix + (f"avg-pool, fc {model.num_features}->{classes}" if classes else "avg-pool")
