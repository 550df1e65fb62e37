"""The pretrained weights resnetlab knows by name: what each file is, where it comes from, what it expects.

The catalog is ``registry.json``, written by ``scripts/make_pretrained_registry.py`` from torchvision's
Weights enums and timm's pretrained configs. A tag is ``ARCH.TAG`` as timm writes it
(``resnet50.a1_in1k``, ``resnet50.tv2_in1k``); the architecture part may also be resnetlab's own name of
the same network (``se_resnet50.a1_in1k`` for timm's ``seresnet50.a1_in1k``).
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import gzip
import json
import os
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

from ..errors import ConfigError
from ..preprocessing import Preprocessing

_DATA = files(__package__)


@dataclass(frozen=True)
class WeightsFile:
    """One file that holds a tag's weights; a tag may have several (torchvision's, timm's hub copy)."""

    url: str
    file_name: str  # its name in the weights folder (and on a RESNETLAB_WEIGHTS_URL mirror)
    format: str  # "pth" or "safetensors"
    sha256: str | None = None
    sha256_prefix: str | None = None  # the leading hex digits a torchvision-style file name carries
    hf_hub_id: str | None = None  # "timm/resnet50.a1_in1k": found in the Hugging Face cache too


@dataclass(frozen=True)
class PretrainedWeights:
    tag: str
    arch: str  # resnetlab's name of the architecture it fits
    num_classes: int
    label_set: str | None  # "imagenet-1k", "imagenet-12k", "imagenet-21k-goog"; None for a headless file
    source: str  # who trained and published it: "torchvision" or "timm"
    files: tuple[WeightsFile, ...]
    params: int
    file_mb: float
    preprocessing: dict  # train_input_size, input_size, resize_size, crop_pct, interpolation, mean, std
    license: str | None
    top1: float | None  # the source's published ImageNet-1k figures
    top5: float | None
    metrics_source: str | None
    origin: str | None  # the recipe or project the weights come from
    paper: str | None

    @property
    def eval_preprocessing(self) -> Preprocessing:
        """What the published figures were measured with: the input a model with these weights expects."""
        p = self.preprocessing
        return Preprocessing(input_size=p["input_size"], resize_size=p["resize_size"], mean=p["mean"],
                             std=p["std"], interpolation=p["interpolation"])

    def class_names(self) -> list[str] | None:
        return list(class_names(self.label_set)) if self.label_set else None  # a copy: the model may change it

    def to_dict(self) -> dict:
        info = asdict(self)
        info["url"] = self.files[0].url
        return info


@functools.cache
def _catalog() -> dict[str, PretrainedWeights]:
    registry = json.loads((_DATA / "registry.json").read_text())
    return {tag: PretrainedWeights(tag=tag, **{**entry, "files": tuple(WeightsFile(**f) for f in entry["files"])})
            for tag, entry in registry["weights"].items()}


@functools.cache
def class_names(label_set: str) -> list[str]:
    """The class names of a label set, in the classifier's order (ImageNet-1k: torchvision's names)."""
    plain, packed = _DATA / "labels" / f"{label_set}.txt", _DATA / "labels" / f"{label_set}.txt.gz"
    text = plain.read_text() if plain.is_file() else gzip.decompress(packed.read_bytes()).decode()
    return text.splitlines()


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Every pretrained tag, optionally filtered by a shell-style pattern (``"resnet50.*"``, ``"*in21k*"``)."""
    tags = list(_catalog())
    return tags if pattern is None else [tag for tag in tags if fnmatch.fnmatch(tag, pattern)
                                         or fnmatch.fnmatch(_canonical_tag(_catalog()[tag]), pattern)]


def _canonical_tag(entry: PretrainedWeights) -> str:
    return f"{entry.arch}.{entry.tag.split('.', 1)[1]}"


def is_pretrained_tag(name: str | os.PathLike) -> bool:
    """Whether ``name`` is a tag and not a file: a file of that name on disk is the file."""
    return not Path(name).exists() and find_weights(os.fspath(name)) is not None


def find_weights(tag: str) -> PretrainedWeights | None:
    catalog = _catalog()
    if tag in catalog:
        return catalog[tag]
    return next((entry for entry in catalog.values() if _canonical_tag(entry) == tag), None)


def find_by_url(url: str) -> PretrainedWeights | None:
    """The tag one of whose files is published at ``url`` (a torchvision or hub URL given as such)."""
    return next((entry for entry in _catalog().values() if any(spec.url == url for spec in entry.files)), None)


def get_weights(tag: str) -> PretrainedWeights:
    """The catalog entry of ``tag``, or a ``ConfigError`` that suggests the closest tags."""
    entry = find_weights(tag)
    if entry is None:
        arch = tag.split(".", 1)[0]
        same_arch = [t for t in _catalog() if t.split(".", 1)[0] == arch or _catalog()[t].arch == arch]
        close = same_arch or difflib.get_close_matches(tag, list(_catalog()), n=3)
        hint = f"; {arch} has {', '.join(close)}" if same_arch else (
            f"; did you mean {' or '.join(close)}?" if close else "")
        raise ConfigError(f"no pretrained weights are named {tag!r}{hint} (`resnetlab weights list` shows them all)")
    return entry


def weights_for(arch: str) -> list[PretrainedWeights]:
    """The tags whose weights fit the architecture ``arch`` (resnetlab's name), in the catalog's order."""
    return [entry for entry in _catalog().values() if entry.arch == arch]


def default_weights(arch: str) -> PretrainedWeights:
    """``pretrained=True``'s choice for ``arch``: its ImageNet-1k tag with the best published top-1
    (the first ImageNet-1k tag where none publishes one)."""
    imagenet = [entry for entry in weights_for(arch) if entry.label_set == "imagenet-1k"]
    if not imagenet:
        others = [entry.tag for entry in weights_for(arch)]
        raise ConfigError(f"{arch} has no ImageNet-1k pretrained weights"
                          + (f"; name one of {', '.join(others)}" if others else
                             "; `resnetlab weights list` shows the architectures that have"))
    return max(imagenet, key=lambda entry: -1.0 if entry.top1 is None else entry.top1)


def pretrained_info(tag: str) -> dict:
    """Everything known of ``tag``: ``url``, ``files``, ``num_classes``, ``label_set``, ``top1``, ``top5``,
    ``preprocessing``, ``license``, ``params``, ``file_mb``, ``source``, ``origin``, ..."""
    return get_weights(tag).to_dict()
