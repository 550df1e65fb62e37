"""Recognise the key layout of a state dict and convert it to resnetlab's.

resnetlab's layout *is* torchvision's, and timm's ``resnet*``/``seresnet*``/``resnext*`` use
it too, so those need no conversion. timm's pre-activation ``resnetv2_*`` models name things
differently (``stem.conv``, ``stages.N.blocks.M``, ``norm``, a 1x1-conv head) and are mapped here.
resnetlab's HRNet is named as timm's, so timm's ``hrnet_*`` state dicts need no conversion either.
"""
from __future__ import annotations

import re

import torch

TORCHVISION = "torchvision"
TIMM_RESNETV2 = "timm-resnetv2"
TIMM_HRNET = "timm-hrnet"

_TIMM_RESNETV2_RULES = [
    (re.compile(r"^stem\.conv\."), "conv1."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.norm(\d)\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{m[3]}."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.conv(\d)\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
    (re.compile(r"^norm\."), "final_bn."),
    (re.compile(r"^head\.fc\."), "fc."),
]


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    if "stem.conv.weight" in state and any(k.startswith("stages.") for k in state):
        return TIMM_RESNETV2
    if "transition1.0.0.weight" in state:
        return TIMM_HRNET
    return TORCHVISION


def to_resnetlab_layout(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in resnetlab's key layout, and the name of the layout it came in."""
    layout = detect_layout(state)
    if layout == TIMM_RESNETV2:
        state = {_rename(key): value for key, value in state.items()}
        if state.get("fc.weight") is not None and state["fc.weight"].ndim == 4:
            state["fc.weight"] = state["fc.weight"].flatten(1)  # timm's head is a 1x1 conv
    return state, layout


def _rename(key: str) -> str:
    for pattern, replacement in _TIMM_RESNETV2_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key
