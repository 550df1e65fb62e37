"""Download one weights file: resumable, checked, and put in place only when complete and right.

The bytes go to ``TARGET.part`` beside the target; an interrupted download continues from there with an
HTTP range request. The finished file must have the expected SHA-256 (or its published prefix; for the
Hugging Face hub, the SHA-256 the hub sends in ``X-Linked-Etag``) and look like weights, not an error
page, before it is renamed over ``TARGET``; a file that fails is deleted.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import CheckpointError
from ..file_kinds import SAFETENSORS, TORCH_CHECKPOINT, looks_like

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 1 << 20
# Beside a file whose checksum is not in the catalog: the SHA-256 the hub sent with it, or `weights import` took.
SIDECAR_SUFFIX = ".sha256"
_TIMEOUT_S = 30


class _HubHeaders(urllib.request.HTTPRedirectHandler):
    """Keeps the SHA-256 the Hugging Face hub announces on its redirect to the file's storage."""

    def __init__(self) -> None:
        self.sha256: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        announced = (headers.get("X-Linked-Etag") or "").strip('"')
        if SHA256_HEX.match(announced):
            self.sha256 = announced
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, target: Path, expected: str | None, *, progress: bool = True, unchecked_ok: bool = False,
             record_checksum: bool = False) -> str:
    """Fetch ``url`` into ``target``; return its SHA-256. ``expected`` is a SHA-256 or its leading digits;
    with none known (and none from the hub), the file is refused unless ``unchecked_ok`` (a URL the user gave).
    ``record_checksum`` writes the SHA-256 to ``TARGET.sha256`` before the file is put in place."""
    part = target.with_name(target.name + ".part")
    hub = _HubHeaders()
    opener = urllib.request.build_opener(hub)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener.open(request, timeout=_TIMEOUT_S) as response:
            if response.status != 206:
                have = 0  # the server sends the whole file: start over
            if "text/html" in response.headers.get("Content-Type", ""):
                raise CheckpointError(f"{url} answered with an HTML page, not a weights file (a login or error page?)")
            total = have + int(response.headers.get("Content-Length") or 0) or None
            with open(part, "ab" if have else "wb") as file, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=target.name, disable=not progress,
                    leave=False) as bar:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    file.write(block)
                    bar.update(len(block))
                file.flush()
                os.fsync(file.fileno())
            if total is not None and part.stat().st_size < total:
                raise ConnectionError(f"the connection closed after {part.stat().st_size:,} of {total:,} bytes")
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the range starts at the end: the part is already whole
            pass
        else:
            raise CheckpointError(f"{url}: the server answered {error.code} {error.reason}") from error
    except (OSError, http.client.HTTPException) as error:  # no network, a reset, TLS, a full or read-only disk
        # The part stays: the next try continues where this one stopped.
        kept = part.stat().st_size if part.is_file() else 0
        resume = f"; {kept:,} bytes kept in {part.name} to resume from" if kept else ""
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise CheckpointError(f"could not download {url} ({reason}){resume}") from error
    return _finish(part, target, url, expected or hub.sha256, unchecked_ok, record_checksum)


def read_text(url: str) -> str | None:
    """A small text file's content (a checksum beside a weights file on a mirror), or None when there is none."""
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            return response.read(1000).decode("ascii", "replace").strip()
    except (OSError, http.client.HTTPException):
        return None


def _finish(part: Path, target: Path, url: str, expected: str | None, unchecked_ok: bool, record_checksum: bool) -> str:
    actual = file_sha256(part)
    kind = looks_like(part)
    if kind not in (SAFETENSORS, TORCH_CHECKPOINT):
        part.unlink()
        raise CheckpointError(f"{url} sent {kind}, not a weights file; it was discarded")
    if expected is None and not unchecked_ok:
        part.unlink()
        raise CheckpointError(f"{url} publishes no checksum and the registry has none: the file was discarded "
                              f"unchecked; fetch it from the source once and `resnetlab weights import` it")
    if expected is not None and not actual.startswith(expected):
        part.unlink()
        raise CheckpointError(f"{url} sent a file with SHA-256 {actual[:16]}..., not the published "
                              f"{expected[:16]}...: corrupt or replaced, and discarded")
    if record_checksum:  # first, so that a file in place always has its checksum beside it
        target.with_name(target.name + SIDECAR_SUFFIX).write_text(actual + "\n")
    os.replace(part, target)
    return actual


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
