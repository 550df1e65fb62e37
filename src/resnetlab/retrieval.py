"""Image retrieval: embed images with a trained ResNet, keep them in an index, find neighbours.

An embedding is the model's global-average-pooled last feature map (what its classifier
reads), L2-normalised, so cosine similarity is a plain matrix product. Exact search over
tens of thousands of embeddings takes milliseconds that way; an approximate-neighbour
library such as faiss only pays off at millions.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .atomic import atomic_path
from .data.datasets import BadImage
from .data.folders import find_images  # noqa: F401  (retrieval's API: embed_images(model, find_images(root)))
from .errors import ConfigError, DataError
from .image_input import normalize, read_crop
from .models.resnet import ResNet

_FORMAT = "resnetlab.index/1"


@dataclass(frozen=True)
class EmbedSettings:
    """What ``resnetlab embed`` does: every image under ``folder`` embedded by ``checkpoint`` into the index ``out``."""

    checkpoint: str  # trained weights (.safetensors) or a pretrained tag
    folder: Path
    out: Path  # an .npz file
    batch_size: int = 64

    def __post_init__(self) -> None:
        if Path(self.out).suffix != ".npz":
            raise ConfigError(f"--out must end in .npz, not {Path(self.out).name}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, not {self.batch_size}")


@dataclass(frozen=True)
class SearchSettings:
    """What ``resnetlab search`` does: the ``k`` images of ``index`` nearest to ``query``, embedded by
    ``checkpoint`` (None: the one the index was built with)."""

    index: Path
    query: Path
    k: int = 5
    checkpoint: str | None = None


@dataclass
class EmbeddingIndex:
    """Embeddings of image files, in the order of ``paths``."""

    embeddings: torch.Tensor  # float32 (N, D), every row of unit length
    paths: list[str]
    labels: list[str] | None = None  # each image's folder name, when every image sits in one
    checkpoint: str | None = None  # the weights that made the embeddings: queries must use them too


@dataclass
class Embedded:
    """What ``embed_images`` produced: one embedding per readable file, and the unreadable ones."""

    embeddings: torch.Tensor  # float32 (N, D), unit rows, in the order of ``paths``
    paths: list[Path]
    skipped: list[BadImage] = field(default_factory=list)


def folder_labels(paths: list[Path], root: str | os.PathLike) -> list[str] | None:
    """Each image's parent folder name, if every image is in a sub-folder of ``root``; else None."""
    root = Path(root).resolve()
    parents = [path.resolve().parent for path in paths]
    if any(parent == root for parent in parents):
        return None
    return [parent.name for parent in parents]


@torch.inference_mode()
def embed(model: ResNet, images: torch.Tensor) -> torch.Tensor:
    """Unit-length pooled features of a normalised float batch, as float32 on the CPU."""
    features = model.forward_head(model.forward_features(images), pre_logits=True)
    return F.normalize(features.float(), dim=1).cpu()


def embed_images(model: ResNet, paths: list[str | os.PathLike], batch_size: int = 64,
                 progress: bool = True) -> Embedded:
    """Embed image files in batches with ``model`` (put in eval mode), a progress bar on stderr.

    Files that cannot be decoded are skipped and listed in ``skipped`` with the reason.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    chunks, kept, skipped, batch = [], [], [], []

    def flush() -> None:
        chunks.append(embed(model, normalize(torch.stack(batch), model.preprocessing).to(device)))
        batch.clear()

    for path in tqdm(paths, desc="embedding", unit="img", disable=not progress):
        try:
            batch.append(read_crop(path, model.preprocessing))
        except DataError as error:
            skipped.append(BadImage(Path(path), str(error)))
            continue
        kept.append(Path(path))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    embeddings = torch.cat(chunks) if chunks else torch.empty(0, model.num_features)
    return Embedded(embeddings, kept, skipped)


def save_index(index: EmbeddingIndex, path: str | os.PathLike) -> Path:
    """Write ``index`` to ``path`` (``.npz``, no pickled objects), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"an index is saved as .npz; give a path ending in .npz, not {path.name}")
    arrays = dict(format=np.array(_FORMAT), embeddings=index.embeddings.numpy().astype(np.float32),
                  paths=np.array(index.paths, dtype=str))
    if index.labels is not None:
        arrays["labels"] = np.array(index.labels, dtype=str)
    if index.checkpoint is not None:
        arrays["checkpoint"] = np.array(index.checkpoint)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)
    return path


def load_index(path: str | os.PathLike) -> EmbeddingIndex:
    """The index ``save_index`` wrote to ``path``."""
    path = Path(path)
    build = f"build one with `resnetlab embed --checkpoint CKPT DIR --out {path.with_suffix('.npz')}`"
    if path.suffix != ".npz":
        raise DataError(f"an index is an .npz file written by resnetlab embed, not {path.name}; {build}")
    if not path.is_file():
        raise DataError(f"index {path} does not exist; {build}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "format" not in arrays or str(arrays["format"]) != _FORMAT:
                raise DataError(f"{path} is not an index written by resnetlab embed; {build}")
            return EmbeddingIndex(
                embeddings=torch.from_numpy(arrays["embeddings"].astype(np.float32)),
                paths=arrays["paths"].tolist(),
                labels=arrays["labels"].tolist() if "labels" in arrays else None,
                checkpoint=str(arrays["checkpoint"]) if "checkpoint" in arrays else None,
            )
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:  # truncated, pickled, ...
        raise DataError(f"{path} is not a readable index ({error}); {build}") from error


def search(index: EmbeddingIndex, queries: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-``k`` of each query row: (scores, positions in ``index.paths``), each (Q, k).

    ``k`` larger than the index returns the whole index, best first.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if queries.shape[-1] != index.embeddings.shape[1]:
        raise ConfigError(f"queries have {queries.shape[-1]} dimensions and the index "
                          f"{index.embeddings.shape[1]}; embed them with the index's checkpoint")
    similarity = F.normalize(queries.float(), dim=-1) @ index.embeddings.T
    return similarity.topk(min(k, len(index.paths)), dim=-1)


def precision_at_k(embeddings: torch.Tensor, labels: torch.Tensor, k: int = 10,
                   chunk: int = 1024) -> float:
    """Mean fraction of each item's ``k`` nearest others (cosine) that share its label.

    Every item is a query against all the others (leave-one-out); with C balanced classes,
    chance is about 1/C. Queries run ``chunk`` at a time to bound memory.
    """
    if not 1 <= k < len(embeddings):
        raise ConfigError(f"k must be between 1 and {len(embeddings) - 1} for {len(embeddings)} items")
    embeddings = F.normalize(embeddings.float(), dim=1)
    hits = 0.0
    for start in range(0, len(embeddings), chunk):
        similarity = embeddings[start:start + chunk] @ embeddings.T
        rows = torch.arange(len(similarity))
        similarity[rows, rows + start] = -torch.inf  # an item is not its own neighbour
        neighbours = similarity.topk(k, dim=1).indices
        hits += (labels[neighbours] == labels[start:start + chunk, None]).sum().item()
    return hits / (len(embeddings) * k)
