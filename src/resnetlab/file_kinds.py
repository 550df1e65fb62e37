"""What a file is by its first bytes: weights (safetensors, a PyTorch checkpoint) or something else, named."""
from __future__ import annotations

import codecs
import zipfile
from pathlib import Path

SAFETENSORS = "a safetensors file"
TORCH_CHECKPOINT = "a PyTorch checkpoint"
# What a file's first bytes say it is; torch.save writes a zip archive, or a pickle in its legacy format.
_MAGIC = ((b"\x80", TORCH_CHECKPOINT), (b"\xff\xd8\xff", "a JPEG image"),  # zip archives: _zip_kind
          (b"\x89PNG", "a PNG image"), (b"\x08", "an ONNX model"))  # ONNX: protobuf field 1, ir_version
_SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the limit safetensors itself enforces


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
    if not _is_text(head):
        return "a file of unknown format"
    # A server's error or login page saved under a weights file's name.
    return "an HTML page" if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")) else "a text file"


def _zip_kind(path: Path) -> str:
    """torch.save and torch.jit.save both write a zip with data.pkl; TorchScript adds its code/, and an
    AOTInductor package holds its compiled model under data/aotinductor/."""
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile:
        return TORCH_CHECKPOINT  # truncated: the reader says so
    if any("/code/" in name for name in names):
        return "a TorchScript model"
    if any("/data/aotinductor/" in name for name in names):
        return "an AOTInductor package"
    if any(name.endswith("/data.pkl") for name in names):
        return TORCH_CHECKPOINT
    return "a NumPy archive" if names and all(name.endswith(".npy") for name in names) else "a zip archive"


def _is_text(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut off at the end is no matter
    except UnicodeDecodeError:
        return False
    return b"\0" not in head
