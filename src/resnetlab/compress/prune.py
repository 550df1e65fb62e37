"""Structured channel pruning: a genuinely smaller dense ResNet, saved as a plain config plus weights.

Each residual block's inner channels (the ones between its convolutions) are ranked, the weakest
removed from the convolution that makes them, its BN, and the convolution that reads them. The
residual stream, whose channels are tied together through every shortcut and addition of a
stage, is left whole: so no pruning can break an addition. The result is an ordinary
``ResNetConfig`` with per-block ``mid_channels``: ``create_model(arch, mid_channels=...)`` builds
it and ``load_model`` reads it back; nothing is pickled.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..complexity import count_macs
from ..errors import ConfigError
from ..models import ResNet

CRITERIA = ("l1", "bn-gamma")
# Per block type: (convolution that makes the inner channels, the BN on them, the convolution that reads them).
INNER_CHANNELS = {
    "basic": [("conv1", "bn1", "conv2")],
    "bottleneck": [("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")],
    "preact_basic": [("conv1", "bn2", "conv2")],
    "preact_bottleneck": [("conv1", "bn2", "conv2"), ("conv2", "bn3", "conv3")],
}
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def prunable(model: ResNet) -> None:
    """Refuse, in one sentence, the architectures whose inner channels cannot simply be sliced."""
    config = model.config
    if config.deformable_stages:
        raise ConfigError("pruning deformable models is not supported: their offset convolutions read the "
                          "inner channels too")
    if config.groups != 1:
        raise ConfigError(f"pruning grouped convolutions (ResNeXt, groups={config.groups}) is not supported: "
                          "channels would have to go a whole group at a time")


def pruned_widths(model: ResNet, keep: float) -> tuple[tuple[int, ...], ...]:
    """Every block's inner width scaled by ``keep`` (at least one channel)."""
    config = model.config
    return tuple(tuple(max(1, round(width * keep)) for width in config.stage_mid_channels(stage))
                 for stage in range(len(config.layers)))


def keep_fraction_for(model: ResNet, target_macs: float, input_size: int | None = None) -> float:
    """The largest uniform fraction of inner channels whose network has at most ``target_macs`` x the MACs."""
    if not 0 < target_macs < 1:
        raise ConfigError(f"target MACs is a fraction of the model's, between 0 and 1 (0.5 halves them), "
                          f"not {target_macs}")
    full = count_macs(_meta(model.config), input_size)

    def macs(keep: float) -> int:
        return count_macs(_meta(replace(model.config, mid_channels=pruned_widths(model, keep))), input_size)

    if macs(0.0) > target_macs * full:
        floor = macs(0.0) / full
        raise ConfigError(f"{model.arch} keeps {floor:.0%} of its MACs with one inner channel per block: the "
                          f"stem, residual stream and classifier are not pruned; ask for --target-macs above {floor:.2f}")
    low, high = 0.0, 1.0
    for _ in range(20):  # bisection to 1e-6 of the fraction
        middle = (low + high) / 2
        low, high = (middle, high) if macs(middle) <= target_macs * full else (low, middle)
    return low


def prune_model(model: ResNet, target_macs: float, criterion: str = "l1") -> ResNet:
    """A new, smaller ``model`` with at most ``target_macs`` of its MACs; the original is untouched.

    ``l1``: a channel's worth is the L1 norm of the filter that makes it (Li et al., ICLR 2017);
    ``bn-gamma``: the absolute scale its BN gives it (Liu et al., network slimming, ICCV 2017).
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown pruning criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    prunable(model)
    widths = pruned_widths(model, keep_fraction_for(model, target_macs))
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for stage, stage_name in enumerate(model.stage_names):
        for index, width in enumerate(widths[stage]):
            prefix = f"{stage_name}.{index}."
            for maker, norm, reader in INNER_CHANNELS[model.config.block]:
                scores = _scores(state, prefix + maker, prefix + norm, criterion)
                kept = scores.topk(width).indices.sort().values
                state[prefix + maker + ".weight"] = state[prefix + maker + ".weight"][kept]
                for tensor in BN_TENSORS:
                    state[f"{prefix}{norm}.{tensor}"] = state[f"{prefix}{norm}.{tensor}"][kept]
                state[prefix + reader + ".weight"] = state[prefix + reader + ".weight"][:, kept]
    pruned = ResNet(replace(model.config, mid_channels=widths), arch=model.arch)
    pruned.load_state_dict(state)
    pruned.class_names, pruned.preprocessing = model.class_names, model.preprocessing
    return pruned


def _scores(state: dict[str, torch.Tensor], maker: str, norm: str, criterion: str) -> torch.Tensor:
    if criterion == "l1":
        return state[maker + ".weight"].abs().flatten(1).sum(1)
    return state[norm + ".weight"].abs()


def _meta(config) -> ResNet:
    with torch.device("meta"):
        return ResNet(config)
