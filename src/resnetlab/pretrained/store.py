"""Where pretrained files live on disk, and how one is found, checked, fetched or imported.

Offline first: a tag's file is looked for in ``RESNETLAB_WEIGHTS_DIR`` (default
``$TORCH_HOME/hub/checkpoints``, torchvision's and timm's own cache, so their downloads are reused) and
in the Hugging Face hub cache timm uses; only then downloaded, from ``RESNETLAB_WEIGHTS_URL`` (a mirror
holding the same file names) when set, else from the file's own URL. Every file is checked against its
checksum before a byte of it is deserialised, and a file that fails is removed, never used.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from ..atomic import atomic_path
from ..errors import CheckpointError
from ..file_kinds import SAFETENSORS, looks_like
from .catalog import PretrainedWeights, WeightsFile, get_weights
from .download import SHA256_HEX, SIDECAR_SUFFIX, download, file_sha256, read_text

OFFLINE_VARIABLES = ("RESNETLAB_OFFLINE", "HF_HUB_OFFLINE")
logger = logging.getLogger("resnetlab")


def weights_dir() -> Path:
    configured = os.environ.get("RESNETLAB_WEIGHTS_DIR")
    return Path(configured).expanduser() if configured else Path(torch.hub.get_dir()) / "checkpoints"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, where timm's downloads are: HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


@dataclass(frozen=True)
class Checksum:
    """What a file must hash to: a full SHA-256, or the leading digits torchvision-style names carry."""

    digest: str
    where: str  # where the expected value comes from, for the error message

    def matches(self, actual: str) -> bool:
        return actual.startswith(self.digest)


def expected_checksum(spec: WeightsFile, path: Path) -> Checksum | None:
    """The checksum ``path`` (a copy of ``spec``) must have: the catalog's, the hub cache's blob name, or the sidecar's."""
    if spec.sha256:
        return Checksum(spec.sha256, "the registry's SHA-256")
    if spec.sha256_prefix:
        return Checksum(spec.sha256_prefix, f"the hash prefix in its name ({spec.sha256_prefix})")
    blob = path.resolve().name  # the hub cache stores each file as blobs/<its SHA-256>
    if SHA256_HEX.match(blob):
        return Checksum(blob, "its Hugging Face cache blob name")
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.is_file() and SHA256_HEX.match(recorded := sidecar.read_text().strip()):
        return Checksum(recorded, f"{sidecar.name}, recorded when it was downloaded or imported")
    return None


def verify(path: Path, spec: WeightsFile, tag: str) -> None:
    """A ``CheckpointError`` unless ``path`` hashes to what it must; a file of ours that does not is removed."""
    expected = expected_checksum(spec, path)
    if expected is None:
        raise CheckpointError(f"{tag}: {path} has no known checksum to check it against; place it with "
                              f"`resnetlab weights import {path} --tag {tag}`")
    actual = file_sha256(path)
    if expected.matches(actual):
        return
    removed = ""
    if not path.is_symlink() and hub_cache_dir() not in path.parents:  # the hub's cache is not ours to delete from
        try:
            path.unlink()
            path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
            removed = "; it was removed"
        except OSError as error:  # a read-only shared folder: say so, and still never use the file
            removed = f"; it could not be removed ({error.strerror}): delete it"
    raise CheckpointError(f"{tag}: {path} is not the published file (SHA-256 {actual[:16]}..., expected "
                          f"{expected.digest[:16]}... from {expected.where}){removed}; fetch it again with "
                          f"`resnetlab weights download {tag} --dir {path.parent}`")


def hub_cache_file(spec: WeightsFile) -> Path | None:
    """``spec``'s file in the Hugging Face cache layout: models--ORG--NAME/snapshots/REVISION/model.safetensors."""
    if not spec.hf_hub_id:
        return None
    repo = hub_cache_dir() / f"models--{spec.hf_hub_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    snapshots = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    snapshots += sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return next((snapshot / "model.safetensors" for snapshot in snapshots
                 if (snapshot / "model.safetensors").is_file()), None)


def cached_file(entry: PretrainedWeights, directory: Path | None = None) -> tuple[Path, WeightsFile] | None:
    """A copy of one of ``entry``'s files already on this machine, or None."""
    directory = directory or weights_dir()
    for spec in entry.files:
        if (directory / spec.file_name).is_file():
            return directory / spec.file_name, spec
    for spec in entry.files:
        if (found := hub_cache_file(spec)) is not None:
            return found, spec
    return None


def download_urls(entry: PretrainedWeights) -> list[tuple[str, WeightsFile]]:
    """Where to fetch ``entry`` from, files with a published checksum first."""
    mirror = os.environ.get("RESNETLAB_WEIGHTS_URL", "").rstrip("/")
    ordered = sorted(entry.files, key=lambda spec: not (spec.sha256 or spec.sha256_prefix))
    return [(f"{mirror}/{spec.file_name}" if mirror else spec.url, spec) for spec in ordered]


def published_checksum(url: str, spec: WeightsFile) -> str | None:
    """The registry's checksum of ``spec``; for a file with none on a mirror, the mirror's ``FILE.sha256``
    (the one ``weights download`` wrote on the machine the mirror's files came from)."""
    if spec.sha256 or spec.sha256_prefix or not os.environ.get("RESNETLAB_WEIGHTS_URL"):
        return spec.sha256 or spec.sha256_prefix
    recorded = read_text(url + SIDECAR_SUFFIX)
    return recorded if recorded and SHA256_HEX.match(recorded) else None


def fetch(tag: str, directory: Path | None = None, *, progress: bool = True) -> Path:
    """The checked local file of ``tag``'s weights: found on disk, else downloaded into ``directory``.

    A copy of ours that fails its check is removed and fetched again (offline, the check's error is raised)."""
    entry = get_weights(tag)
    directory = directory or weights_dir()
    if (found := _checked_copy(entry, directory)) is not None:
        return found
    if offline():
        raise CheckpointError(_not_here(entry, directory, "offline mode is on (RESNETLAB_OFFLINE or HF_HUB_OFFLINE)"))
    with download_lock(directory, entry.tag):
        if (found := _checked_copy(entry, directory)) is not None:  # fetched by another process meanwhile
            return found
        return _download_one(entry, directory, progress)


@contextlib.contextmanager
def download_lock(directory: Path, name: str) -> Iterator[None]:
    """One download of ``name`` into ``directory`` at a time: the ranks of a torchrun job all ask at once."""
    lock = FileLock(directory / f".{name}.lock")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as error:
        raise CheckpointError(f"cannot write to {directory} to download {name} ({error.strerror}); set "
                              "RESNETLAB_WEIGHTS_DIR (or --dir) to a folder you can write to") from error
    try:
        yield
    finally:
        lock.release()


def _checked_copy(entry: PretrainedWeights, directory: Path) -> Path | None:
    found = cached_file(entry, directory)
    if found is None:
        return None
    try:
        verify(*found, entry.tag)
        return found[0]
    except CheckpointError as error:
        if offline() or hub_cache_dir() in found[0].parents:
            raise
        logger.warning(f"{error}; fetching it again")
        return None


def _download_one(entry: PretrainedWeights, directory: Path, progress: bool) -> Path:
    failures = []
    for url, spec in download_urls(entry):
        expected = published_checksum(url, spec)
        if expected is None and os.environ.get("RESNETLAB_WEIGHTS_URL"):
            failures.append(f"the mirror has no {spec.file_name}{SIDECAR_SUFFIX} beside {url} and the registry "
                            "no checksum for it")
            continue
        target = directory / spec.file_name
        try:
            download(url, target, expected, progress=progress, record_checksum=not (spec.sha256 or spec.sha256_prefix))
        except CheckpointError as error:
            failures.append(str(error))
            continue
        return target
    raise CheckpointError(_not_here(entry, directory, "; ".join(failures)))


def _not_here(entry: PretrainedWeights, directory: Path, why: str) -> str:
    names = " or ".join(spec.file_name for spec in entry.files)
    return (f"{entry.tag}: no weights file here ({names} in {directory}) and none could be fetched: {why}. "
            f"On a machine with network: `resnetlab weights download {entry.tag} --dir DIR`, then copy the "
            f"file (with its {SIDECAR_SUFFIX}, if it has one) into {directory} (or set RESNETLAB_WEIGHTS_DIR, or "
            "RESNETLAB_WEIGHTS_URL to a mirror)")


def import_file(path: Path, tag: str, directory: Path | None = None, *, fits=None) -> Path:
    """Check ``path`` against ``tag``'s checksum and place it in ``directory`` under the tag's file name.

    A file whose tag publishes no checksum (timm's hub copies) is checked by ``fits(path)`` instead, which
    raises unless the file loads strictly into the tag's architecture; its SHA-256 is then recorded beside it.
    """
    entry = get_weights(tag)
    directory = directory or weights_dir()
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    actual = file_sha256(path)
    spec = next((s for s in entry.files if (s.sha256 or s.sha256_prefix)
                 and actual.startswith(s.sha256 or s.sha256_prefix)), None)
    if spec is None:
        unchecked = [s for s in entry.files if not (s.sha256 or s.sha256_prefix)
                     and (s.format == "safetensors") == (looks_like(path) == SAFETENSORS)]
        if not unchecked or fits is None:
            published = ", ".join(f"{s.file_name} ({s.sha256 or s.sha256_prefix})" for s in entry.files)
            raise CheckpointError(f"{path} is not one of {tag}'s published files (SHA-256 {actual[:16]}...; "
                                  f"published: {published})")
        fits(path)
        spec = unchecked[0]
    target = directory / spec.file_name
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    if not (spec.sha256 or spec.sha256_prefix):
        target.with_name(target.name + SIDECAR_SUFFIX).write_text(actual + "\n")
    return target


def cached_files(directory: Path | None = None) -> list[tuple[str, Path, WeightsFile]]:
    """Every catalog file present in ``directory`` or the hub cache, with the tag it belongs to."""
    from .catalog import _catalog

    directory = directory or weights_dir()
    found = []
    for entry in _catalog().values():
        for spec in entry.files:
            for path in (directory / spec.file_name, hub_cache_file(spec)):
                if path is not None and path.is_file():
                    found.append((entry.tag, path, spec))
    return found
