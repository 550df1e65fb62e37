"""Read a weights source (file, URL or mapping) into a flat state dict of tensors.

Nothing here can run code from a file: ``.pth``/``.pt`` are read with ``weights_only=True``.
"""
from __future__ import annotations

import os
import pickle
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError
from ..file_kinds import SAFETENSORS, TORCH_CHECKPOINT, looks_like
from ..pretrained.catalog import find_by_url, is_pretrained_tag
from ..pretrained.download import download, file_sha256
from ..pretrained.store import download_lock, fetch, weights_dir

# Keys under which training scripts (ours, torchvision's references, timm's) nest the weights.
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

WeightsSource = str | os.PathLike | Mapping[str, torch.Tensor]



def read_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state, where = dict(source), "the state dict"
    else:
        where = os.fspath(source)
        state = _read_file(_local_path(where))
    return _strip_wrappers(_unnest(state, where))


def _local_path(where: str) -> Path:
    """The file to read: a path as given; a file:// URL in place, since a cached copy of a local file
    would go stale; an http(s) URL downloaded once into the weights folder; a pretrained tag's checked file."""
    url = urllib.parse.urlparse(where)
    if url.scheme == "file":
        return Path(urllib.request.url2pathname(url.path))
    if url.scheme in ("http", "https"):
        return _download_once(where)
    return fetch(where) if is_pretrained_tag(where) else Path(where)


def _download_once(url: str) -> Path:
    """A URL's file in the weights folder, downloaded on first use: a pretrained file's URL is that tag's checked file."""
    if (entry := find_by_url(url)) is not None:
        return fetch(entry.tag)
    filename = Path(urllib.parse.urlparse(url).path).name
    if not filename:
        raise CheckpointError(f"cannot tell a file name from the URL {url!r}")
    target = weights_dir() / filename
    # torchvision's file names carry the first hex digits of the file's SHA-256 (resnet50-11ad3fa6.pth).
    match = torch.hub.HASH_REGEX.search(filename)
    prefix = match.group(1) if match else None
    with download_lock(target.parent, filename):
        if target.exists() and (prefix is None or file_sha256(target).startswith(prefix)):
            return target
        try:
            download(url, target, prefix, unchecked_ok=True)
        except CheckpointError as error:
            raise CheckpointError(f"{error}; with no network, download it elsewhere and pass the file's path, "
                                  f"or place it at {target}") from error
    return target


def refuse_folder(path: Path, kind: str, suffixes) -> None:
    """A ``CheckpointError`` when ``path`` is a folder (a run directory, say), naming the ``kind`` files in it."""
    if path.is_dir():
        inside = sorted(str(file) for file in path.iterdir() if file.suffix in suffixes)
        raise CheckpointError(f"{path} is a folder; give a {kind}" + (f", e.g. {', '.join(inside[:3])}"
                                                                      if inside else " (there is none in it)"))


def _read_file(path: Path) -> dict:
    refuse_folder(path, "weights file", (".safetensors", ".pth", ".pt"))
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    kind = looks_like(path)
    if kind not in (SAFETENSORS, TORCH_CHECKPOINT):
        raise CheckpointError(f"{path} looks like {kind}, neither a PyTorch checkpoint nor a safetensors file; "
                              "give a state dict saved with torch.save (.pth, .pt) or a .safetensors file")
    if kind == SAFETENSORS:
        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is not a readable safetensors file "
                                  f"(truncated or corrupt?): {error}") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds pickled objects other than tensors, which could run code when loaded; "
            "resnetlab refuses them (weights_only=True). Re-save only the state dict "
            "(torch.save(model.state_dict(), path)) from a source you trust") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(error).splitlines()[0]}") from error


def _unnest(state: Mapping, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where} holds a {type(state).__name__}, not a state dict")
    for key in _NESTED_KEYS:
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{where} is not a state dict: {', '.join(map(str, not_tensors[:5]))} "
                              "are not tensors")
    return dict(state)


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
