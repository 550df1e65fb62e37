"""Read a weights source (file, URL or mapping) into a flat state dict of tensors.

Nothing here can run code from a file: ``.pth``/``.pt`` are read with ``weights_only=True``.
"""
from __future__ import annotations

import codecs
import os
import pickle
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError

# Keys under which training scripts (ours, torchvision's references, timm's) nest the weights.
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

WeightsSource = str | os.PathLike | Mapping[str, torch.Tensor]

SAFETENSORS = "a safetensors file"
TORCH_CHECKPOINT = "a PyTorch checkpoint"
# What a file's first bytes say it is; torch.save writes a zip archive, or a pickle in its legacy format.
_MAGIC = ((b"\x80", TORCH_CHECKPOINT), (b"\xff\xd8\xff", "a JPEG image"),  # zip archives: _zip_kind
          (b"\x89PNG", "a PNG image"), (b"\x08", "an ONNX model"))  # ONNX: protobuf field 1, ir_version
_SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the limit safetensors itself enforces


def read_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state, where = dict(source), "the state dict"
    else:
        where = os.fspath(source)
        state = _read_file(_local_path(where))
    return _strip_wrappers(_unnest(state, where))


def _local_path(where: str) -> Path:
    """The file to read: a path as given; a file:// URL in place, since a cached copy of a local file
    would go stale; an http(s) URL downloaded once into the cache."""
    url = urllib.parse.urlparse(where)
    if url.scheme == "file":
        return Path(urllib.request.url2pathname(url.path))
    return download(where) if url.scheme in ("http", "https") else Path(where)


def looks_like(path: Path) -> str:
    """What ``path`` is by its first bytes: SAFETENSORS, TORCH_CHECKPOINT, or a phrase like "a text file"."""
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "an empty file"
    # safetensors: the header's length as a little-endian u64, then the JSON header itself.
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _SAFETENSORS_MAX_HEADER:
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "a text file" if _is_text(head) else "a file of unknown format"


def _zip_kind(path: Path) -> str:
    """torch.save and torch.jit.save both write a zip with data.pkl; TorchScript adds its code/."""
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile:
        return TORCH_CHECKPOINT  # truncated: the reader says so
    if any("/code/" in name for name in names):
        return "a TorchScript model"
    if any(name.endswith("/data.pkl") for name in names):
        return TORCH_CHECKPOINT
    return "a NumPy archive" if names and all(name.endswith(".npy") for name in names) else "a zip archive"


def _is_text(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut off at the end is no matter
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def cache_dir() -> Path:
    """Downloaded weights live beside torchvision's (``$TORCH_HOME/hub/checkpoints``), so each is fetched once."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str) -> Path:
    filename = Path(urllib.parse.urlparse(url).path).name
    if not filename:
        raise CheckpointError(f"cannot tell a file name from the URL {url!r}")
    target = cache_dir() / filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # torchvision's file names carry the first hex digits of the file's SHA-256 (resnet50-11ad3fa6.pth).
    match = torch.hub.HASH_REGEX.search(filename)
    try:
        torch.hub.download_url_to_file(url, os.fspath(target), match.group(1) if match else None,
                                       progress=True)
    except (urllib.error.URLError, OSError) as error:
        raise CheckpointError(
            f"could not download {url} ({getattr(error, 'reason', error)}); with no network, "
            f"download it elsewhere and pass the file's path, or place it at {target}") from error
    except RuntimeError as error:  # torch.hub's hash check
        raise CheckpointError(f"the file downloaded from {url} is corrupt: {error}") from error
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
