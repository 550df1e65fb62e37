"""Freezing: no gradients for chosen modules, which also stay in eval mode through ``train()``, so
their BN running statistics are kept (the fine-tuning and detection practice)."""
from __future__ import annotations

from torch import nn


def freeze_modules(model: nn.Module, frozen: list[nn.Module], batch_norm: bool = False) -> None:
    """Freeze ``frozen`` and, with ``batch_norm``, every BN layer of ``model``; ``model.frozen_modules`` holds
    them, and the model's ``train`` calls ``keep_frozen_in_eval``."""
    if batch_norm:
        frozen = frozen + [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for module in frozen:
        module.requires_grad_(False)
    model.frozen_modules = frozen
    model.train(model.training)


def keep_frozen_in_eval(model: nn.Module) -> None:
    for module in model.frozen_modules:
        module.eval()
