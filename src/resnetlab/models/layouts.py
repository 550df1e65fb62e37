"""Recognise the key layout of a state dict and convert it to resnetlab's.

resnetlab's layout *is* torchvision's, and timm's ``resnet*``/``seresnet*``/``resnext*`` use
it too, so those need no conversion. timm's pre-activation ``resnetv2_*`` models name things
differently (``stem.conv`` or a deep stem's ``stem.conv1..3``, ``stages.N.blocks.M``, ``norm``, a 1x1-conv
head) and are mapped here.
resnetlab's HRNet is named as timm's, so timm's ``hrnet_*`` state dicts need no conversion either.
"""
from __future__ import annotations

import re
from collections.abc import Collection

import torch

TORCHVISION = "torchvision"
TIMM_RESNETV2 = "timm-resnetv2"
TIMM_HRNET = "timm-hrnet"

# A deep stem's convs and norms as indices of resnetlab's ``conv1`` Sequential (ReLUs between them).
_DEEP_STEM_INDEX = {"conv1": 0, "norm1": 1, "conv2": 3, "norm2": 4, "conv3": 6}
_TIMM_RESNETV2_RULES = [
    (re.compile(r"^stem\.conv\."), "conv1."),
    (re.compile(r"^stem\.((?:conv|norm)\d)\."), lambda m: f"conv1.{_DEEP_STEM_INDEX[m[1]]}."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.norm(\d)\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{m[3]}."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.conv(\d)\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
    (re.compile(r"^norm\."), "final_bn."),
    (re.compile(r"^head\.fc\."), "fc."),
]
_TIMM_SHORTCUT_CONV = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\.(\w+)$")


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    timm_stem = "stem.conv.weight" in state or "stem.conv1.weight" in state  # a 7x7 or a deep stem
    if timm_stem and any(k.startswith("stages.") for k in state):
        return TIMM_RESNETV2
    if "transition1.0.0.weight" in state:
        return TIMM_HRNET
    return TORCHVISION


def to_resnetlab_layout(state: dict[str, torch.Tensor], target_keys: Collection[str] = (),
                        ) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in resnetlab's key layout, and the name of the layout it came in.

    timm calls a pre-activation shortcut's conv ``downsample.conv`` whether or not an average pool
    (ResNet-D) comes first; resnetlab's is ``downsample.1`` after a pool, ``downsample.0`` without, and
    ``target_keys`` (the model's state-dict keys) say which the model has.
    """
    layout = detect_layout(state)
    if layout == TIMM_RESNETV2:
        state = {_rename(key, target_keys): value for key, value in state.items()}
        if state.get("fc.weight") is not None and state["fc.weight"].ndim == 4:
            state["fc.weight"] = state["fc.weight"].flatten(1)  # timm's head is a 1x1 conv
    return state, layout


def _rename(key: str, target_keys: Collection[str]) -> str:
    shortcut = _TIMM_SHORTCUT_CONV.match(key)
    if shortcut:
        block = f"layer{int(shortcut[1]) + 1}.{shortcut[2]}.downsample"
        after_pool = f"{block}.1.{shortcut[3]}"
        return after_pool if after_pool in target_keys else f"{block}.0.{shortcut[3]}"
    for pattern, replacement in _TIMM_RESNETV2_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key
