"""Training checkpoints: everything a resumed run needs to continue as if never stopped."""
from __future__ import annotations

import io
import random
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import CheckpointError


def rng_state() -> dict:
    """The process's RNGs (weights, dropout, drop-path); augmentation keeps none (``data.seeding``)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict) -> None:
    """Written atomically: a kill or a full disk mid-write leaves the previous checkpoint intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:  # written by Python: a full disk is an OSError, not torch's RuntimeError
        tmp.write_bytes(buffer.getbuffer())


def load_training_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist; start the run without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a checkpoint is only ever written atomically: this is not ours
        raise CheckpointError(f"{path} is not a readable training checkpoint: {error}") from error
