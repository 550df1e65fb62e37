"""Optimizer with the ResNet recipe's parameter groups."""
from __future__ import annotations

import torch
from torch import nn

from ..models.weights import classifier_name

def parameter_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float) -> list[dict]:
    """Split trainable parameters by weight decay and learning-rate scale.

    BN weights and all biases (``p.ndim <= 1``) get no weight decay: decaying them only
    shrinks the normalisation scale. The classifier (``fc``; an HRNet's ``classifier``) learns at
    the full lr and the backbone at ``backbone_lr_scale`` times it, the usual fine-tuning split.
    """
    head = f"{classifier_name(model)}."
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = weight_decay if param.ndim > 1 else 0.0
        scale = 1.0 if name.startswith(head) else backbone_lr_scale
        groups.setdefault((decay, scale), []).append(param)
    return [dict(params=params, weight_decay=decay, lr_scale=scale)
            for (decay, scale), params in groups.items()]


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, nesterov: bool,
                    weight_decay: float, backbone_lr_scale: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay, backbone_lr_scale)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    return torch.optim.AdamW(groups, lr=lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Apply the schedule's factor to every group, honouring its lr scale; return the head's lr."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_scale"] * factor
    return base_lr * factor
