"""Gradient checkpointing of residual blocks: activations recomputed in the backward pass, not kept.

Recomputing a block runs its batch norms a second time; their running statistics must not take
that second step, or every checkpointed step would count twice. They are held still while a
block is recomputed, so a run with checkpointing ends with the weights and statistics of one without.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)``, keeping only ``x`` for the backward pass."""
    return checkpoint(block, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _statistics_held(block)))


@contextlib.contextmanager
def _statistics_held(block: nn.Module) -> Iterator[None]:
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)
