"""The model behind the service: one forward pass per batch gives each image's class probabilities
and its embedding, from whatever model file it was given."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import eval_transform
from ..deployed import model_file_format
from ..image_input import check_reads_image_files, normalize
from ..preprocessing import Preprocessing


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
    """A model file ready to serve: ``infer(crops)`` on a batch of uint8 crops of ``input_size``."""

    def __init__(self, checkpoint: str | Path, backend: str = "auto"):
        path = Path(checkpoint)
        if model_file_format(path) == "safetensors":
            self._load_weights(path, backend)
        else:
            self._load_graph(path)
        check_reads_image_files(self.in_chans)
        self.path = path
        self.crop = eval_transform(self.preprocessing)
        self.class_names = self.class_names or [str(i) for i in range(self.num_classes)]

    def _load_weights(self, path: Path, backend: str) -> None:
        from ..inference import optimize
        from ..models import load_model
        from ..models.weights import classifier_name

        model = load_model(path).eval()
        self.format, self.arch, self.precision = "safetensors", model.arch, "fp32"
        self.class_names, self.num_classes = model.class_names, model.config.num_classes
        self.preprocessing: Preprocessing = model.preprocessing
        self.embedding_dim: int | None = model.num_features
        self.in_chans = model.config.in_chans
        side = self.preprocessing.input_size
        features = optimize(_PooledFeatures(model), backend, input_size=(side, side), device="cpu")
        self.backend = features.backend
        classifier = getattr(model, classifier_name(model)) if self.num_classes else None

        def run(images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
            pooled = features(images)
            with torch.inference_mode():
                logits = classifier(pooled) if classifier is not None else None
            return logits, F.normalize(pooled, dim=1)

        self._run = run

    def _load_graph(self, path: Path) -> None:
        from ..deployed import load_deployed

        deployed = load_deployed(path)
        self.format, self.arch, self.precision = deployed.format, deployed.arch, deployed.precision
        self.class_names, self.num_classes = deployed.class_names, deployed.num_classes
        self.preprocessing = deployed.preprocessing
        self.embedding_dim = None  # an exported graph ends at the logits
        self.in_chans = deployed.in_chans
        self.backend = deployed.backend
        self._run = lambda images: (deployed(images), None)

    @property
    def classifies(self) -> bool:
        return self.num_classes > 0

    def infer(self, crops: torch.Tensor) -> list[ImageOutput]:
        """One forward pass over uint8 crops (N x C x S x S): an output per image, in order."""
        logits, embeddings = self._run(normalize(crops, self.preprocessing))
        probabilities = logits.float().softmax(dim=1) if logits is not None else None
        return [ImageOutput(probabilities[i] if probabilities is not None else None,
                            embeddings[i] if embeddings is not None else None)
                for i in range(len(crops))]

    def metadata(self) -> dict:
        return {"arch": self.arch, "file": self.path.name, "format": self.format, "precision": self.precision,
                "backend": self.backend, "num_classes": self.num_classes, "class_names": self.class_names,
                "embedding_dim": self.embedding_dim, "in_chans": self.in_chans,
                "preprocessing": {"input_size": self.preprocessing.input_size,
                                  "resize_size": self.preprocessing.resize_size,
                                  "mean": list(self.preprocessing.mean), "std": list(self.preprocessing.std),
                                  "interpolation": self.preprocessing.interpolation}}
