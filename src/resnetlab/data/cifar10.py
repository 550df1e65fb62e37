"""CIFAR-10 from its official archive: found locally or downloaded once, checksum verified.

The archive (``cifar-10-python.tar.gz``) holds pickled batches: ``data_batch_1`` to ``_5``
(train), ``test_batch`` and ``batches.meta`` (class names). It is read straight from the
tar into uint8 tensors; nothing is extracted to disk.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.utils import calculate_md5

from ..atomic import atomic_path
from ..errors import DataError

logger = logging.getLogger("resnetlab")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
DOWNLOAD_TIMEOUT = 30  # seconds of silence before a download gives up, so no network fails fast


@dataclass(frozen=True)
class Cifar10:
    class_names: tuple[str, ...]  # airplane, automobile, ..., truck: label i is class_names[i]
    train_images: torch.Tensor  # uint8 50000x3x32x32
    train_labels: torch.Tensor  # int64 50000
    test_images: torch.Tensor  # uint8 10000x3x32x32
    test_labels: torch.Tensor


def default_download_dir() -> Path:
    """``$TORCH_HOME/datasets``: beside torch's hub cache, shared by every run on the machine."""
    return Path(torch.hub.get_dir()).parent / "datasets"


def fetch_archive(download_dir: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """``download_dir/cifar-10-python.tar.gz``, downloaded from ``url`` first if it is not there."""
    target = Path(download_dir).expanduser() / ARCHIVE_NAME
    if target.is_file():
        return verify_archive(target, md5)
    logger.info("downloading CIFAR-10 (163 MiB) from %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, atomic_path(target) as part:
            with open(part, "wb") as file:
                shutil.copyfileobj(response, file, 1 << 20)
            if calculate_md5(part) != md5:
                raise DataError(f"the file downloaded from {url} failed its md5 check (a broken transfer?); "
                                "run again to retry")
    except (urllib.error.URLError, OSError) as error:
        raise DataError(
            f"could not download CIFAR-10 from {url} ({getattr(error, 'reason', error)}); with no network, "
            f"pass a local copy of {ARCHIVE_NAME} as data=/path/to/{ARCHIVE_NAME} "
            f"or put it in {target.parent}") from error
    return target


def verify_archive(path: str | os.PathLike, md5: str = CIFAR10_MD5) -> Path:
    """``path`` if it is the official archive (by md5), else a ``DataError`` saying what it is not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"CIFAR-10 archive {path} does not exist; --data cifar10 (data='cifar10') downloads it")
    actual = calculate_md5(path)
    if actual != md5:
        raise DataError(f"{path} is not the official CIFAR-10 archive (md5 {actual}, expected {md5}); "
                        f"delete it to download again, or replace it with a good copy")
    return path


def load_archive(path: str | os.PathLike) -> Cifar10:
    """Read the batches of a (verified) archive into tensors."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    found = {}
    try:
        # Stream mode reads the gzip once, front to back; random access would re-read it per member.
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    found[name] = _ArrayUnpickler(tar.extractfile(member), encoding="latin1").load()
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise DataError(f"{path} is not a readable CIFAR-10 archive: {error}") from error
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it is not the CIFAR-10 python archive")
    train = [_batch_tensors(found[name], path, name) for name in TRAIN_BATCHES]
    test_images, test_labels = _batch_tensors(found[TEST_BATCH], path, TEST_BATCH)
    return Cifar10(class_names=tuple(found[META]["label_names"]),
                   train_images=torch.cat([images for images, _ in train]),
                   train_labels=torch.cat([labels for _, labels in train]),
                   test_images=test_images, test_labels=test_labels)


def _batch_tensors(batch: dict, path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch["labels"]) != len(data):
        raise DataError(f"{path}: {name} holds data of shape {data.shape} for {len(batch['labels'])} labels; "
                        "expected N x 3072 bytes (32x32 RGB, channel-major) and N labels")
    # Each row is the red plane, then green, then blue, each 32x32 row-major: already CHW.
    images = torch.from_numpy(data.copy()).view(-1, 3, 32, 32)
    return images, torch.tensor(batch["labels"], dtype=torch.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Loads the batches' dicts of numpy arrays, lists and strings, and refuses anything else:
    unpickling an arbitrary object can run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it holds a {module}.{name} object, which CIFAR-10 batches never do")
        return super().find_class(module, name)
