"""The official CIFAR-10 archive format, download, checksum and offline errors, with a tiny real-pixel fake."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import build_loaders, cifar10
from resnetlab.errors import ConfigError, DataError
from resnetlab.preprocessing import CIFAR10

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
UNREACHABLE = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port: connection refused at once


def _write_archive(path: Path, members: dict[str, object]) -> str:
    """A tar.gz laid out like the official one: cifar-10-batches-py/<member>, each a protocol-2 pickle."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory, cifar10_root) -> tuple[Path, str, dict[str, np.ndarray]]:
    """5 train batches of 10 and a test batch of 10 real CIFAR images, one per class, in the official format."""
    def rows(split: str, index: int) -> np.ndarray:
        pixels = [np.array(Image.open(cifar10_root / split / name / f"{index:04d}.jpg").convert("RGB"))
                  for name in CLASSES]
        return np.stack([image.transpose(2, 0, 1).reshape(-1) for image in pixels])  # R plane, G, B

    batches = {f"data_batch_{i}": rows("train", i) for i in range(1, 6)}
    batches["test_batch"] = rows("test", 0)
    members = {name: {"batch_label": name, "labels": list(range(10)), "data": data,
                      "filenames": [f"{c}_{i}.png" for i, c in enumerate(CLASSES)]}
               for name, data in batches.items()}
    members["batches.meta"] = {"num_cases_per_batch": 10, "label_names": list(CLASSES), "num_vis": 3072}
    path = tmp_path_factory.mktemp("cifar_source") / "cifar-10-python.tar.gz"
    return path, _write_archive(path, members), batches


def test_archive_loads_into_uint8_tensors_with_official_labels(fake_archive):
    path, _, batches = fake_archive
    data = cifar10.load_archive(path)
    assert data.class_names == CLASSES
    assert data.train_images.shape == (50, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10, 3, 32, 32)
    assert data.train_labels.tolist() == list(range(10)) * 5 and data.test_labels.dtype == torch.int64
    # Row layout: 1024 red bytes, 1024 green, 1024 blue, each 32x32 row-major.
    green = torch.from_numpy(batches["test_batch"][3, 1024:2048].reshape(32, 32))
    assert torch.equal(data.test_images[3, 1], green)


def test_download_from_a_url_verifies_and_then_reuses_the_local_copy(fake_archive, tmp_path):
    path, md5, _ = fake_archive
    cache = tmp_path / "datasets"
    fetched = cifar10.fetch_archive(cache, path.as_uri(), md5)
    assert fetched == cache / "cifar-10-python.tar.gz" and fetched.read_bytes() == path.read_bytes()
    assert cifar10.fetch_archive(cache, UNREACHABLE, md5) == fetched  # no network needed the second time


def test_download_with_the_wrong_checksum_fails_and_leaves_nothing_behind(fake_archive, tmp_path):
    path, _, _ = fake_archive
    with pytest.raises(DataError, match="failed its md5 check"):
        cifar10.fetch_archive(tmp_path, path.as_uri(), "0" * 32)
    assert os.listdir(tmp_path) == []


def test_a_local_copy_with_the_wrong_checksum_is_refused(fake_archive):
    path, md5, _ = fake_archive
    with pytest.raises(DataError, match=f"is not the official CIFAR-10 archive \\(md5 {md5}, expected "
                                        f"{cifar10.CIFAR10_MD5}\\)"):
        cifar10.verify_archive(path)


def test_offline_without_a_copy_says_how_to_pass_one(tmp_path):
    with pytest.raises(DataError) as error:
        cifar10.fetch_archive(tmp_path / "datasets", UNREACHABLE, cifar10.CIFAR10_MD5)
    message = str(error.value)
    assert message.startswith(f"could not download CIFAR-10 from {UNREACHABLE}")
    assert "pass a local copy of cifar-10-python.tar.gz" in message and str(tmp_path / "datasets") in message
    assert not (tmp_path / "datasets" / "cifar-10-python.tar.gz").exists()


def test_build_loaders_with_cifar10_finds_the_archive_in_the_download_dir(fake_archive, tmp_path, monkeypatch):
    path, md5, _ = fake_archive
    monkeypatch.setattr(cifar10, "CIFAR10_URL", UNREACHABLE)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)
    with pytest.raises(DataError, match="could not download CIFAR-10"):
        build_loaders(DataConfig(data="cifar10", download_dir=str(tmp_path)), CIFAR10)
    (tmp_path / path.name).symlink_to(path)
    config = DataConfig(data="cifar10", download_dir=str(tmp_path), batch_size=10, workers=0)
    train_loader, val_loader, info = build_loaders(config, CIFAR10)
    assert info.class_names == CLASSES and (info.num_train, info.num_val, info.val_split) == (50, 10, "test")
    assert info.image_size == (32, 32) and info.augment == "cifar"
    images, labels = next(iter(val_loader))
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == list(range(10))
    assert len(train_loader) == 5


def test_build_loaders_takes_the_archive_path_as_data(fake_archive, monkeypatch):
    path, md5, _ = fake_archive
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)
    _, _, info = build_loaders(DataConfig(data=str(path), batch_size=5, max_per_class=2, workers=0), CIFAR10)
    assert (info.num_train, info.num_val) == (20, 10) and info.source == str(path)


def test_cifar10_has_no_val_split_and_no_per_item_mode(fake_archive):
    path, _, _ = fake_archive
    with pytest.raises(DataError, match="CIFAR-10 has a train and a test split only"):
        build_loaders(DataConfig(data=str(path), val_split="val"), CIFAR10)
    with pytest.raises(ConfigError, match="always held in memory"):
        build_loaders(DataConfig(data=str(path), cache="none"), CIFAR10)


def test_an_archive_with_a_pickled_object_other_than_arrays_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    path = tmp_path / "cifar-10-python.tar.gz"
    _write_archive(path, {"data_batch_1": RunsCode()})
    with pytest.raises(DataError, match=r"is not a readable CIFAR-10 archive: it holds a \w+\.system object"):
        cifar10.load_archive(path)


def test_an_archive_missing_batches_is_named(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    _write_archive(path, {"batches.meta": {"label_names": list(CLASSES)}})
    with pytest.raises(DataError, match="lacks data_batch_1, data_batch_2, .*test_batch"):
        cifar10.load_archive(path)
