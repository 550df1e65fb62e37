"""Predict classes of image files with a saved model."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.datasets import BadImage
from .errors import ConfigError, DataError
from .image_input import check_reads_image_files, normalize, read_crop
from .deploy.model import DeployedModel


@dataclass(frozen=True)
class PredictSettings:
    """What ``resnetlab predict`` does: the ``top_k`` most probable labels of each image under ``inputs``."""

    checkpoint: str | os.PathLike  # any model file (.safetensors, .onnx, .pt2, .pt) or a pretrained tag
    inputs: Sequence[str | os.PathLike]  # image files and folders (searched recursively)
    top_k: int = 5
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, not {self.top_k}")


@dataclass
class Prediction:
    path: str
    labels: list[str]  # most probable first
    probabilities: list[float]

    def as_dict(self) -> dict:
        return {"path": self.path, "top": [{"label": label, "probability": round(p, 6)}
                                           for label, p in zip(self.labels, self.probabilities)]}


@torch.inference_mode()
def predict_files(model: DeployedModel, paths: list[Path], top_k: int = 5, batch_size: int = 32
                  ) -> tuple[list[Prediction], list[BadImage]]:
    """Top-k labels and softmax probabilities per readable file; unreadable ones come back apart."""
    check_reads_image_files(model.in_chans)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    k = min(top_k, len(names))
    predictions, bad = [], []
    for start in range(0, len(paths), batch_size):
        crops, kept = [], []
        for path in paths[start:start + batch_size]:
            try:
                crops.append(read_crop(path, model.preprocessing))
                kept.append(path)
            except DataError as error:
                bad.append(BadImage(path, str(error)))
        if not crops:
            continue
        probabilities = model(normalize(torch.stack(crops), model.preprocessing).to(model.device)).softmax(dim=1)
        top = probabilities.topk(k, dim=1)
        for path, values, indices in zip(kept, top.values.tolist(), top.indices.tolist()):
            predictions.append(Prediction(str(path), [names[i] for i in indices], values))
    return predictions, bad
