"""The model behind the service: one forward pass per batch gives each image's class probabilities
and its embedding, from whatever model file it was given."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import eval_transform
from ..deploy.files import load_deployed, model_file_format
from ..deploy.model import DeployedModel, described_by
from ..deploy.optimize import optimize
from ..image_input import check_reads_image_files, normalize
from ..models import load_model
from ..models.weights import classifier_name


@dataclass
class ImageOutput:
    probabilities: torch.Tensor | None  # (num_classes,) softmax; None for a model without a classifier
    embedding: torch.Tensor | None  # (D,) unit length, as `resnetlab embed`; None for a graph file


class _PooledFeatures(nn.Module):
    """The network up to its global pool: what the classifier reads and what an embedding is."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


class ServedModel:
    """A model file ready to serve: ``infer(crops)`` on a batch of uint8 crops of its input size. ``deployed`` is
    the model that runs (its backend, precision and what its file says)."""

    def __init__(self, checkpoint: str | Path, backend: str = "auto"):
        path = Path(checkpoint)
        if model_file_format(path) == "safetensors":
            self.deployed, self.embedding_dim, self._infer = _weights(path, backend)
        else:
            self.deployed = load_deployed(path)
            self.embedding_dim = None  # an exported graph ends at the logits
            self._infer = lambda images: (self.deployed(images), None)
        check_reads_image_files(self.deployed.in_chans)
        self.crop = eval_transform(self.deployed.preprocessing)
        self.class_names = self.deployed.class_names or [str(i) for i in range(self.deployed.num_classes)]

    @property
    def classifies(self) -> bool:
        return self.deployed.num_classes > 0

    def infer(self, crops: torch.Tensor) -> list[ImageOutput]:
        """One forward pass over uint8 crops (N x C x S x S): an output per image, in order."""
        logits, embeddings = self._infer(normalize(crops, self.deployed.preprocessing))
        probabilities = logits.float().softmax(dim=1) if logits is not None else None
        return [ImageOutput(probabilities[i] if probabilities is not None else None,
                            embeddings[i] if embeddings is not None else None)
                for i in range(len(crops))]

    def metadata(self) -> dict:
        deployed, preprocessing = self.deployed, self.deployed.preprocessing
        return {"arch": deployed.arch, "file": deployed.path.name, "format": deployed.format,
                "precision": deployed.precision, "backend": deployed.backend, "num_classes": deployed.num_classes,
                "class_names": self.class_names, "embedding_dim": self.embedding_dim, "in_chans": deployed.in_chans,
                "preprocessing": {"input_size": preprocessing.input_size, "resize_size": preprocessing.resize_size,
                                  "mean": list(preprocessing.mean), "std": list(preprocessing.std),
                                  "interpolation": preprocessing.interpolation}}


def _weights(path: Path, backend: str) -> tuple[DeployedModel, int, Callable]:
    """Trained weights served on ``backend``: the network up to its pool runs there, and one pass gives both the
    logits (the classifier on the pooled features) and the embedding (those features, unit length)."""
    model = load_model(path).eval()
    side = model.preprocessing.input_size
    features = optimize(_PooledFeatures(model), backend, input_size=(side, side), device="cpu")
    classifier = getattr(model, classifier_name(model)) if model.config.num_classes else None

    @torch.inference_mode()
    def logits_of(pooled: torch.Tensor) -> torch.Tensor | None:
        return classifier(pooled) if classifier is not None else None

    def infer(images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        pooled = features(images)
        return logits_of(pooled), F.normalize(pooled, dim=1)

    deployed = replace(features, run=lambda images: logits_of(features(images)), path=path, format="safetensors",
                       **described_by(model))
    return deployed, model.num_features, infer
