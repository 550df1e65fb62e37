"""Structured channel pruning: a genuinely smaller dense ResNet, saved as a plain config plus weights.

Two kinds of channels go, ranked by how little they carry:

- **Inner channels**, between a block's convolutions: removed from the convolution that makes
  them, its BN, and the convolution that reads them.
- **Residual-stream channels**, the ones the stem, the blocks' last layers and the shortcuts
  write, and every block of the next stage reads. A channel of the stream is one channel for all
  of them, and for the stages an identity or zero-padding shortcut joins to it: it is ranked by
  the sum of its scores there and kept or removed everywhere at once, so every addition stays
  aligned. By default (``keep_stream=True``) the stream stays whole and inner channels alone go:
  on a trained cifar_resnet56 at half the MACs that kept far more accuracy (BENCHMARKS.md);
  ``keep_stream=False`` prunes both.

Criteria: ``l1``, the L1 norm of the filters that make a channel (Li et al., ICLR 2017);
``bn-gamma``, the absolute scales its BNs give it (Liu et al., network slimming, ICCV 2017);
``taylor``, the first-order estimate of how much the loss on real images changes without it,
(sum over its filters of weight x gradient)^2 (Molchanov et al., CVPR 2019).

One fraction of the channels is kept, the largest that meets the MAC budget, each width rounded
to a multiple of channels if asked (8 or 16 keep a CPU's vector registers full). The result is an
ordinary ``ResNetConfig`` with per-block ``mid_channels`` and per-stage ``stream_channels``:
``create_model(arch, mid_channels=..., stream_channels=...)`` builds it and ``load_model`` reads it
back; nothing is pickled.

The BN statistics a pruned network inherits describe the wider network's activations, not its
own: ``recalibrate_batch_norm`` measures them afresh on a few hundred training images (adaptive
BN, Li et al., EagleEye, ECCV 2020). On a trained cifar_resnet56 pruned to half its MACs (inner
channels, l1), that took top-1 before any training from 12.7% to 59.8% (BENCHMARKS.md).
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..complexity import count_macs
from ..errors import ConfigError
from ..models import ResNet
from ..models.resnet import ResNetConfig

CRITERIA = ("l1", "bn-gamma", "taylor")
# Pruned widths are multiples of this many channels: a width such as 11 or 45 leaves a CPU's
# vectors (8 floats with AVX2, 16 with AVX-512) partly empty. At equal MACs, 8 made ONNX Runtime
# 1.05-1.3x faster than exact widths on resnet18, resnet50 and cifar_resnet56 (BENCHMARKS.md).
CHANNEL_MULTIPLE = 8
# Per block type: (convolution that makes the inner channels, the BN on them, the convolution that reads them).
INNER_CHANNELS = {
    "basic": [("conv1", "bn1", "conv2")],
    "bottleneck": [("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")],
    "preact_basic": [("conv1", "bn2", "conv2")],
    "preact_bottleneck": [("conv1", "bn2", "conv2"), ("conv2", "bn3", "conv3")],
}
# Per block type: the convolution that writes the block's output into the stream, and the BN after it.
STREAM_WRITERS = {
    "basic": ("conv2", "bn2"),
    "bottleneck": ("conv3", "bn3"),
    "preact_basic": ("conv2", None),
    "preact_bottleneck": ("conv3", None),
}
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class StreamTensor:
    """A weight or buffer with one dimension along a segment of the residual stream."""

    name: str  # state-dict key
    dim: int
    role: str  # "writer" (a conv making the channels), "norm" (a BN tensor on them) or "reader"


def prunable(model: ResNet, keep_stream: bool) -> None:
    """Refuse, in one sentence, the architectures whose channels cannot simply be sliced."""
    if not isinstance(model, ResNet):
        raise ConfigError(f"pruning is for ResNets, and {model.arch} is an HRNet: its fusion layers tie every "
                          "branch's channels to the others' (not supported)")
    config = model.config
    if config.stage_blocks is not None:
        raise ConfigError("pruning networks that mix block kinds across stages (stage_blocks) is not supported")
    if config.block not in STREAM_WRITERS:
        raise ConfigError(f"pruning {config.block} blocks is not supported: their 3x3 is split into parts whose "
                          "channels would have to go together")
    if config.deformable_stages:
        raise ConfigError("pruning deformable models is not supported: their offset convolutions read the "
                          "inner channels too")
    if config.groups != 1:
        raise ConfigError(f"pruning grouped convolutions (ResNeXt, groups={config.groups}) is not supported: "
                          "channels would have to go a whole group at a time")
    if config.attention is not None and not keep_stream:
        raise ConfigError(f"pruning the residual stream of {config.attention.upper()} attention models is not "
                          "supported (their attention mixes the stream's channels); leave out --prune-stream to "
                          "prune inner channels only")
    if config.block_reduce_first != 1 or config.first_channels is not None:
        raise ConfigError("pruning networks whose first 1x1s have widths of their own (SENet-154, timm's pruned "
                          "ECA nets) is not supported: prune keeps one inner width per block")
    if config.norm != "batch":
        raise ConfigError(f"pruning {config.norm} norm models is not supported: pruning ranks and slices "
                          "channels by their BN layers, and group, EvoNorm and filter response norms are not BN")
    if config.weight_standardization:
        raise ConfigError("pruning weight-standardised models (BiT) is not supported: a filter's standardised "
                          "values depend on all of its input channels, so slicing them changes the rest")
    if config.replace_stem_pool and not keep_stream:
        raise ConfigError("pruning the residual stream of ResNet-RS models is not supported (their stem pool "
                          "is a convolution on it); leave out --prune-stream to prune inner channels only")


def pruned_config(config: ResNetConfig, keep: float, keep_stream: bool, multiple: int = 1) -> ResNetConfig:
    """``config`` with every inner width, and unless ``keep_stream`` the stream, scaled by ``keep``
    and rounded to a ``multiple`` of channels (never above the original width).

    Each stage keeps at least ``multiple`` inner channels and as many of the stream that are its own.
    """
    mids = tuple(tuple(_scaled(width, keep, multiple, required=True) for width in config.stage_mid_channels(stage))
                 for stage in range(len(config.layers)))
    if keep_stream:
        return replace(config, mid_channels=mids)
    streams = []
    for segment, (inherited, new) in enumerate(_stream_layout(config)):
        own = _scaled(new, keep, multiple, required=not inherited)
        streams.append((streams[segment - 1] if inherited else 0) + own)
    return replace(config, mid_channels=mids, stream_channels=tuple(streams))


def _scaled(width: int, keep: float, multiple: int, required: bool) -> int:
    """``width x keep`` to the nearest ``multiple``; at least one multiple if ``required``, at most ``width``."""
    scaled = multiple * round(width * keep / multiple)
    return min(width, max(multiple if required else 0, scaled))


def check_budget(target_macs: float, multiple: int) -> None:
    if not 0 < target_macs < 1:
        raise ConfigError(f"target MACs is a fraction of the model's, between 0 and 1 (0.5 halves them), "
                          f"not {target_macs}")
    if multiple < 1:
        raise ConfigError(f"channel widths round to a multiple of at least 1, not {multiple}")


def budget_config(model: ResNet, target_macs: float, keep_stream: bool = True, input_size: int | None = None,
                  multiple: int = CHANNEL_MULTIPLE) -> ResNetConfig:
    """The pruned widths with at most ``target_macs`` x the MACs: the largest uniform fraction of the
    channels that fits, then, for widths rounded to a ``multiple``, the budget that rounding left."""
    check_budget(target_macs, multiple)
    full = count_macs(_meta(model.config), input_size)

    @functools.cache  # rounded to a multiple, many fractions of the bisection give the same widths
    def fits(config: ResNetConfig) -> bool:
        return count_macs(_meta(config), input_size) <= target_macs * full

    narrowest = pruned_config(model.config, 0.0, keep_stream, multiple)
    if not fits(narrowest):
        floor = count_macs(_meta(narrowest), input_size) / full
        kept = "the stem, residual stream and classifier are not pruned" if keep_stream else \
            "the first and last layers keep their inputs and outputs"
        fewest = "one channel" if multiple == 1 else f"{multiple} channels"
        finer = "" if multiple == 1 else f", or round the widths more finely (--round-to {multiple // 2 or 1})"
        raise ConfigError(f"{model.arch} keeps {floor:.0%} of its MACs with {fewest} per layer ({kept}); "
                          f"ask for --target-macs above {floor:.2f}{finer}")
    low, high = 0.0, 1.0
    for _ in range(20):  # bisection to 1e-6 of the fraction
        middle = (low + high) / 2
        low, high = (middle, high) if fits(pruned_config(model.config, middle, keep_stream, multiple)) else (low, middle)
    config = pruned_config(model.config, low, keep_stream, multiple)
    return _fill_budget(model.config, config, fits, multiple) if multiple > 1 else config


def _fill_budget(original: ResNetConfig, config: ResNetConfig, fits: Callable[[ResNetConfig], bool],
                 multiple: int) -> ResNetConfig:
    """Rounded widths that were equal jump together (16 -> 8 -> 16 for a whole stage and the stream
    beside it), so the uniform fraction can stop well short of the budget. Widen, one multiple at a
    time, the stage (inner channels) or stream segment that is most pruned and still fits."""
    while True:
        wider = next((candidate for _, candidate in sorted(_widenings(original, config, multiple),
                                                           key=lambda pair: pair[0]) if fits(candidate)), None)
        if wider is None:
            return config
        config = wider


def _widenings(original: ResNetConfig, config: ResNetConfig, multiple: int) -> list[tuple[float, ResNetConfig]]:
    """Each way of adding ``multiple`` channels to one stage's inner widths or to one stream segment's
    own channels (capped at the original widths), with the fraction of that part kept so far."""
    options = []
    for stage in range(len(original.layers)):
        full, now = original.stage_mid_channels(stage), config.stage_mid_channels(stage)
        if sum(now) < sum(full):
            widened = tuple(min(limit, width + multiple) for width, limit in zip(now, full))
            mids = (*config.mid_channels[:stage], widened, *config.mid_channels[stage + 1:])
            options.append((sum(now) / sum(full), replace(config, mid_channels=mids)))
    if config.stream_channels is None:
        return options
    streams, layout = config.stream_channels, _stream_layout(original)
    for segment, (inherited, full) in enumerate(layout):
        own = streams[segment] - (streams[segment - 1] if inherited else 0)
        if own < full:
            added, carriers = min(multiple, full - own), _carriers(layout, segment)
            widened = tuple(width + added if index in carriers else width for index, width in enumerate(streams))
            options.append((own / full, replace(config, stream_channels=widened)))
    return options


def prune_model(model: ResNet, target_macs: float, criterion: str = "l1", keep_stream: bool = True,
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                multiple: int = CHANNEL_MULTIPLE) -> ResNet:
    """A new, smaller ``model`` with at most ``target_macs`` of its MACs; the original is untouched.

    ``batches`` of (normalised images, labels) are what the ``taylor`` criterion measures the loss on.
    Every pruned width is a ``multiple`` of channels (8 or 16 fill a CPU's vector registers), unless
    the original width is not.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown pruning criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "taylor" and batches is None:
        raise ConfigError("the taylor criterion ranks channels by their effect on the loss: it needs "
                          "labelled training images")
    prunable(model, keep_stream)
    config = budget_config(model, target_macs, keep_stream, multiple=multiple)
    score = _channel_scorer(model, criterion, batches)  # channels are ranked on the original weights
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    _prune_inner_channels(score, state, model, config.mid_channels, criterion)
    if not keep_stream:
        _prune_stream(score, state, model, config.stream_channels, criterion)
    pruned = ResNet(config, arch=model.arch)
    pruned.load_state_dict(state)
    pruned.class_names, pruned.preprocessing = model.class_names, model.preprocessing
    return pruned.train(model.training)


def recalibrate_batch_norm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Replace every BN layer's running statistics (mean, variance, batch count), in place, by
    their average over ``batches`` of normalised images. The weights and every module's mode stay;
    if a batch fails, the old statistics come back."""
    if not batches:
        raise ConfigError("re-estimating the BN statistics needs training images, and got none")
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    saved = [(norm.training, norm.momentum, copy.deepcopy(norm.state_dict())) for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch counts the same
        norm.train()
    try:
        with torch.no_grad():
            for images in batches:
                model(images)
    except BaseException:
        for norm, (_, _, statistics) in zip(norms, saved):
            norm.load_state_dict(statistics)
        raise
    finally:
        for norm, (mode, momentum, _) in zip(norms, saved):
            norm.train(mode)
            norm.momentum = momentum


def width_options(config: ResNetConfig) -> dict:
    """The ``create_model`` options that rebuild a pruned ``config``'s widths (none for an unpruned one)."""
    options = {}
    if config.mid_channels is not None:
        options["mid_channels"] = [list(widths) for widths in config.mid_channels]
    if config.stream_channels is not None:
        options["stream_channels"] = list(config.stream_channels)
    return options


def stream_tensors(model: ResNet) -> list[list[StreamTensor]]:
    """For each segment of the stream (0 the stem's output, then each stage's), what runs along it."""
    block_type = model.config.block
    writer_conv, writer_norm = STREAM_WRITERS[block_type]
    segments: list[list[StreamTensor]] = [[] for _ in range(len(model.stage_names) + 1)]

    def norm(segment: int, prefix: str) -> None:
        segments[segment] += [StreamTensor(f"{prefix}.{tensor}", 0, "norm") for tensor in BN_TENSORS]

    stem_convs = [name for name, module in model.named_modules()
                  if name.split(".")[0] == "conv1" and isinstance(module, nn.Conv2d)]  # a deep stem has three
    segments[0].append(StreamTensor(f"{stem_convs[-1]}.weight", 0, "writer"))
    if model.bn1 is not None:
        norm(0, "bn1")
    for stage, stage_name in enumerate(model.stage_names):
        for index, block in enumerate(model.stages[stage]):
            prefix, reads, writes = f"{stage_name}.{index}", stage if index == 0 else stage + 1, stage + 1
            segments[reads].append(StreamTensor(f"{prefix}.conv1.weight", 1, "reader"))
            if block_type.startswith("preact"):
                norm(reads, f"{prefix}.bn1")  # pre-activation: the block normalises its input
            segments[writes].append(StreamTensor(f"{prefix}.{writer_conv}.weight", 0, "writer"))
            if writer_norm is not None:
                norm(writes, f"{prefix}.{writer_norm}")
            if isinstance(block.downsample, nn.Sequential):  # a projection shortcut: (pool,) conv (+ BN)
                conv = next(i for i, module in enumerate(block.downsample) if isinstance(module, nn.Conv2d))
                segments[reads].append(StreamTensor(f"{prefix}.downsample.{conv}.weight", 1, "reader"))
                segments[writes].append(StreamTensor(f"{prefix}.downsample.{conv}.weight", 0, "writer"))
                if len(block.downsample) > conv + 1:
                    norm(writes, f"{prefix}.downsample.{conv + 1}")
    if model.final_bn is not None:
        norm(-1, "final_bn")
    if isinstance(model.fc, nn.Linear):
        segments[-1].append(StreamTensor("fc.weight", 1, "reader"))
    return segments


def _stream_layout(config: ResNetConfig) -> list[tuple[bool, int]]:
    """Per segment: whether it carries on the previous segment's channels (an identity or zero-padding
    shortcut joins them, as its first channels), and how many channels of its own it adds, as built."""
    widths = config.built_stream_channels
    layout = [(False, widths[0])]
    for stage in range(len(config.layers)):
        inherited = config.entry_shortcut(stage) != "projection"  # identity (None) or zero_pad
        layout.append((inherited, widths[stage + 1] - (widths[stage] if inherited else 0)))
    return layout


def _carriers(layout: list[tuple[bool, int]], segment: int) -> range:
    """``segment`` and the segments after it that an identity or zero-padding shortcut carries its
    own channels into: one channel of the stream for all of them."""
    end = segment + 1
    while end < len(layout) and layout[end][0]:
        end += 1
    return range(segment, end)


def _channel_scorer(model: ResNet, criterion: str, batches) -> Callable[[str], torch.Tensor]:
    """``score(name)``: the worth of each output channel of a convolution's weight (``l1``, ``taylor``)
    or of a BN's weight (``bn-gamma``)."""
    weights = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if criterion == "l1":
        return lambda name: weights[name].abs().flatten(1).sum(1)
    if criterion == "bn-gamma":
        return lambda name: weights[name].abs()
    saliency = _taylor_saliency(model, batches)
    return lambda name: saliency[name]


def _taylor_saliency(model: ResNet, batches) -> dict[str, torch.Tensor]:
    """Per convolution, per output channel: (sum over its filter of weight x d loss / d weight)^2,
    summed over ``batches``, with the model in eval mode (its BN statistics as they will be used)."""
    model = copy.deepcopy(model).eval().requires_grad_(True)
    convs = {name: weight for name, weight in model.named_parameters() if weight.dim() == 4}
    saliency = {name: torch.zeros(weight.shape[0], device=weight.device) for name, weight in convs.items()}
    seen = 0
    for images, labels in batches:
        gradients = torch.autograd.grad(F.cross_entropy(model(images), labels), list(convs.values()))
        for (name, weight), gradient in zip(convs.items(), gradients):
            saliency[name] += (weight.detach() * gradient).flatten(1).sum(1).square()
        seen += 1
    if not seen:
        raise ConfigError("the taylor criterion got no training images to measure the loss on")
    return saliency


def _prune_inner_channels(score: Callable[[str], torch.Tensor], state: dict[str, torch.Tensor], model: ResNet,
                          widths: tuple[tuple[int, ...], ...], criterion: str) -> None:
    for stage, stage_name in enumerate(model.stage_names):
        for index, width in enumerate(widths[stage]):
            prefix = f"{stage_name}.{index}."
            for maker, norm, reader in INNER_CHANNELS[model.config.block]:
                scores = score(prefix + (norm if criterion == "bn-gamma" else maker) + ".weight")
                kept = scores.topk(width).indices.sort().values
                state[prefix + maker + ".weight"] = state[prefix + maker + ".weight"][kept]
                for tensor in BN_TENSORS:
                    state[f"{prefix}{norm}.{tensor}"] = state[f"{prefix}{norm}.{tensor}"][kept]
                state[prefix + reader + ".weight"] = state[prefix + reader + ".weight"][:, kept]


def _prune_stream(score: Callable[[str], torch.Tensor], state: dict[str, torch.Tensor], model: ResNet,
                  widths: tuple[int, ...], criterion: str) -> None:
    segments = stream_tensors(model)
    role = "norm" if criterion == "bn-gamma" else "writer"

    def scores(segment: int) -> torch.Tensor:
        """Each channel's scores summed over the filters that write it, or over the BNs on it."""
        return sum(score(tensor.name) for tensor in segments[segment]
                   if tensor.role == role and (role == "writer" or tensor.name.endswith(".weight")))

    layout = _stream_layout(model.config)
    built = model.config.built_stream_channels
    segment_scores = [scores(segment) for segment in range(len(layout))]
    kept: list[torch.Tensor] = []
    for segment, (inherited, new) in enumerate(layout):
        start = built[segment - 1] if inherited else 0
        own = slice(start, start + new)
        # A channel is one channel for every later segment that carries it on: rank it by all of them.
        worth = sum(segment_scores[later][own] for later in _carriers(layout, segment))
        count = widths[segment] - (len(kept[-1]) if inherited else 0)
        chosen = worth.topk(count).indices.sort().values + start
        kept.append(torch.cat([kept[-1], chosen]) if inherited else chosen)
    for segment, tensors in enumerate(segments):
        for tensor in tensors:
            state[tensor.name] = state[tensor.name].index_select(tensor.dim, kept[segment])


def _meta(config) -> ResNet:
    with torch.device("meta"):
        return ResNet(config)
