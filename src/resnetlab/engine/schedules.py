"""Learning-rate schedules: a multiplier of the base lr as a small pure function of the step.

Linear warmup (Goyal et al. 2017) then one decay: cosine (Loshchilov & Hutter), step (the
ResNet paper's /10 at fixed points), or reduce-on-plateau (the only one that needs state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Rises linearly from 1/warmup_steps to 1 over the first ``warmup_steps`` steps."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def cosine_factor(step: int, total_steps: int, min_factor: float = 0.0) -> float:
    progress = min(max(step, 0) / max(total_steps, 1), 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_factor(step: int, milestones: tuple[int, ...], gamma: float) -> float:
    return gamma ** sum(step >= milestone for milestone in milestones)


@dataclass
class PlateauState:
    """Reduce-on-plateau bookkeeping: saved in checkpoints so a resumed run decays alike."""

    best: float = -math.inf
    bad_epochs: int = 0
    factor: float = 1.0


class LRSchedule:
    def __init__(self, name: str, total_steps: int, warmup_steps: int = 0,
                 milestones: tuple[int, ...] = (), gamma: float = 0.1, min_factor: float = 0.0,
                 patience: int = 5):
        self.name = name
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.milestones = milestones
        self.gamma = gamma
        self.min_factor = min_factor
        self.patience = patience
        self.plateau = PlateauState()

    def __call__(self, step: int) -> float:
        if self.name == "cosine":
            decay = cosine_factor(step - self.warmup_steps, self.total_steps - self.warmup_steps,
                                  self.min_factor)
        elif self.name == "step":
            decay = step_factor(step, self.milestones, self.gamma)
        elif self.name == "plateau":
            decay = self.plateau.factor
        else:
            decay = 1.0
        return warmup_factor(step, self.warmup_steps) * decay

    def observe(self, metric: float) -> None:
        """Report the epoch's validation metric (higher is better); only plateau uses it."""
        if self.name != "plateau":
            return
        if metric > self.plateau.best:
            self.plateau.best, self.plateau.bad_epochs = metric, 0
        else:
            self.plateau.bad_epochs += 1
            if self.plateau.bad_epochs > self.patience:
                self.plateau.factor *= self.gamma
                self.plateau.bad_epochs = 0
