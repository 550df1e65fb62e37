"""Which torch device a command runs on, from what the user asked for ("auto", "cpu", "cuda", "cuda:N")."""
from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but no CUDA GPU is visible; use --device cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved
