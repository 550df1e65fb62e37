"""Folder layouts: every mistake is one clear DataError before any image is decoded; the file-list hash."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from resnetlab.config import DataConfig
from resnetlab.data import build_loaders
from resnetlab.errors import ConfigError, DataError
from resnetlab.preprocessing import CIFAR10


def _folder(root: Path, cifar10_root: Path, layout: dict[str, list[str]], per_class: int = 2) -> Path:
    """``layout`` maps a split to its class folders, filled with real CIFAR images of that class."""
    for split, classes in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in classes:
            (root / split / name).mkdir()
            for image in sorted((cifar10_root / "train" / name).iterdir())[:per_class]:
                shutil.copy(image, root / split / name / image.name)
    return root


def _error(config: DataConfig) -> str:
    with pytest.raises(DataError) as error:
        build_loaders(config, CIFAR10)
    message = str(error.value)
    assert "\n" not in message  # one line, fit for the CLI
    return message


def test_missing_path_is_named(tmp_path):
    message = _error(DataConfig(data=str(tmp_path / "nowhere")))
    assert message.startswith(f"data folder {tmp_path / 'nowhere'} does not exist")
    assert "train/<class>/*.jpg" in message and "cifar10" in message


def test_a_file_is_not_a_data_folder(tmp_path):
    (tmp_path / "images.zip").write_bytes(b"PK")
    assert "is a file, not a data folder" in _error(DataConfig(data=str(tmp_path / "images.zip")))


def test_missing_train_split(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"val": ["cat", "dog"]})
    assert _error(DataConfig(data=str(root))).startswith(f"{root} has no train folder; expected {root}/train/")


def test_missing_val_and_test_split(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"]})
    message = _error(DataConfig(data=str(root)))
    assert f"{root}/val or {root}/test does not exist" in message


def test_named_val_split_must_exist(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    assert f"{root}/holdout does not exist" in _error(DataConfig(data=str(root), val_split="holdout"))


def test_train_without_class_folders(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": [], "val": ["cat", "dog"]})
    shutil.copy(cifar10_root / "train" / "cat" / "0000.jpg", root / "train" / "loose.jpg")
    assert _error(DataConfig(data=str(root))) == (
        f"{root}/train has no class folders; expected {root}/train/<class>/*.jpg")


def test_empty_class_folder(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    (root / "train" / "frog").mkdir()
    (root / "train" / "frog" / "notes.txt").write_text("not an image")
    assert _error(DataConfig(data=str(root))).startswith(f"class folder {root}/train/frog has no image files")


def test_single_class(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat"], "val": ["cat"]})
    message = _error(DataConfig(data=str(root)))
    assert "has a single class folder (cat); classification needs at least two" in message


def test_class_sets_that_differ_between_splits(tmp_path, cifar10_root):
    layout = {"train": ["cat", "dog", "frog"], "val": ["cat", "deer", "dog"]}
    root = _folder(tmp_path / "data", cifar10_root, layout)
    message = _error(DataConfig(data=str(root)))
    assert re.search(r"differ \(only in train: frog; only in val: deer\)", message)


def test_a_class_whose_images_are_all_bad(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    for image in (root / "val" / "dog").iterdir():
        image.write_bytes(b"")
    assert _error(DataConfig(data=str(root), workers=0)).startswith(f"{root}/val/dog has no readable images")


def test_too_few_images_for_one_batch(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    error = _error(DataConfig(data=str(root), batch_size=128))
    assert "make no full batch of 128" in error and error.endswith("lower the batch size (--batch-size)")


def test_test_split_is_found_when_there_is_no_val(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    _, val_loader, info = build_loaders(DataConfig(data=str(root), batch_size=2, workers=0), CIFAR10)
    assert info.val_split == "test" and info.num_val == 4 and len(val_loader) == 2


def test_hidden_files_loose_files_and_other_extensions_are_ignored(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "cat" / "README.txt").write_text("cats")
    (root / "train" / ".cache").mkdir()
    nested = root / "train" / "cat" / "more"
    nested.mkdir()
    shutil.copy(cifar10_root / "train" / "cat" / "0100.jpg", nested / "0100.JPG")
    _, _, info = build_loaders(DataConfig(data=str(root), batch_size=2, workers=0), CIFAR10)
    assert info.class_names == ("cat", "dog") and info.num_train == 5 and not info.bad_files


def test_file_list_hash_is_stable_and_changes_when_a_file_is_added(tmp_path, cifar10_root):
    root = _folder(tmp_path / "data", cifar10_root, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    config = DataConfig(data=str(root), batch_size=2, workers=0)

    def file_hash() -> str:
        return build_loaders(config, CIFAR10)[2].file_list_hash

    first = file_hash()
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert file_hash() == first
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert build_loaders(DataConfig(data=str(copy), batch_size=2, workers=0), CIFAR10)[2].file_list_hash == first
    shutil.copy(cifar10_root / "train" / "dog" / "0100.jpg", root / "train" / "dog" / "0100.jpg")
    assert file_hash() != first


@pytest.mark.parametrize("field, value, message", [
    ("data", "", "data is empty"),
    ("val_split", "train", "to evaluate on the training images, give their folder as the data: --data DIR/train"),
    ("val_split", "a/b", "val_split must name a folder"),
    ("cache", "disk", "unknown cache 'disk'; choose one of auto, memory, none"),
    ("augment", "strong", "unknown augment preset 'strong'"),
    ("auto_augment", "trivialaugment", "unknown auto_augment policy 'trivialaugment'"),
    ("bad_images", "ignore", "unknown bad_images policy 'ignore'; choose one of skip, error"),
    ("batch_size", 0, "batch_size must be at least 1"),
    ("workers", -1, "workers must be 0 or more"),
    ("max_per_class", 0, "max_per_class must be at least 1"),
    ("input_size", 0, "input_size must be a positive number of pixels"),
    ("mixup_alpha", -0.2, "mixup_alpha must be 0 (off) or positive"),
    ("color_jitter", -1.0, "color_jitter must be 0 (off) or positive"),
])
def test_data_config_rejects_invalid_values(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DataConfig(**{field: value})


def test_rank_outside_world_size_is_rejected_before_reading_data(tmp_path):
    with pytest.raises(ConfigError, match="rank 2 is not among world_size 2 processes"):
        build_loaders(DataConfig(data=str(tmp_path / "nowhere")), CIFAR10, rank=2, world_size=2)
