"""Scan an image-folder dataset (``root/<split>/<class>/<file>``) and check its layout.

Every layout mistake is a ``DataError`` raised here, before any image is decoded.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

# Extensions PIL decodes; other files (README.txt, .DS_Store) are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Evaluation splits looked for beside train/ when none is named.
VAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Split:
    """The image files of one split, with labels from their sorted class folder names."""

    root: Path  # the split folder, e.g. data/train
    class_names: tuple[str, ...]
    files: tuple[Path, ...]
    labels: tuple[int, ...]

    def subset(self, keep: list[int]) -> Split:
        return Split(self.root, self.class_names, tuple(self.files[i] for i in keep),
                     tuple(self.labels[i] for i in keep))


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root``, sub-folders included, sorted; other files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give a folder of images (searched recursively)")
    files = sorted(path for path in root.rglob("*")
                   if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
                   and not any(part.startswith(".") for part in path.relative_to(root).parts))
    if not files:
        raise DataError(f"{root} holds no image files ({', '.join(IMAGE_EXTENSIONS[:5])}, ...) "
                        "in it or its sub-folders")
    return files


def image_paths(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given, folders searched recursively for images."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += find_images(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item} does not exist; give image files or folders of images")
    return paths


def find_splits(root: str | os.PathLike, val_split: str | None = None) -> tuple[Path, Path]:
    """The train and evaluation split folders of ``root``: ``val`` (or ``test``) unless named."""
    root = Path(root).expanduser()
    expected = f"expected {root}/train/<class>/*.jpg beside {root}/val/<class>/*.jpg"
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; {expected} (for CIFAR-10: --data cifar10, "
                        "data='cifar10')")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a data folder; {expected}")
    if not (root / "train").is_dir():
        raise DataError(f"{root} has no train folder; {expected}")
    names = (val_split,) if val_split is not None else VAL_SPLITS
    for name in names:
        if (root / name).is_dir():
            return root / "train", root / name
    wanted = " or ".join(f"{root}/{name}" for name in names)
    raise DataError(f"{root} has no evaluation split: {wanted} does not exist; "
                    f"put held-out images in {root}/{names[0]}/<class>/*.jpg")


def scan_split(split_dir: Path, max_per_class: int | None = None) -> Split:
    """The image files under ``split_dir/<class>/`` (sub-folders and symlinks followed), sorted."""
    class_names = tuple(sorted(entry.name for entry in os.scandir(split_dir)
                               if entry.is_dir() and not entry.name.startswith(".")))
    if not class_names:
        raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/*.jpg")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        found = _image_files(split_dir / name)
        if not found:
            raise DataError(f"class folder {split_dir / name} has no image files "
                            f"({', '.join(IMAGE_EXTENSIONS[:4])}, ...); add images or remove the folder")
        found = found[:max_per_class]
        files += found
        labels += [label] * len(found)
    return Split(split_dir, class_names, tuple(files), tuple(labels))


def check_class_sets(train: Split, val: Split) -> None:
    """Both splits must hold the same classes, else label i would mean different things."""
    if len(train.class_names) < 2:
        raise DataError(f"{train.root} has a single class folder ({train.class_names[0]}); "
                        "classification needs at least two")
    if train.class_names != val.class_names:
        only_train = sorted(set(train.class_names) - set(val.class_names))
        only_val = sorted(set(val.class_names) - set(train.class_names))
        differences = [f"only in {split.root.name}: {', '.join(names)}"
                       for split, names in ((train, only_train), (val, only_val)) if names]
        raise DataError(f"the class folders of {train.root} and {val.root} differ "
                        f"({'; '.join(differences)}); both splits need the same classes")


def file_list_hash(root: Path, files: list[Path]) -> str:
    """``sha256:<hex>`` over the sorted relative paths and byte sizes: changes when a file does."""
    digest = hashlib.sha256()
    for relative, size in sorted((path.relative_to(root).as_posix(), path.stat().st_size)
                                 for path in files):
        digest.update(f"{relative}\t{size}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _image_files(class_dir: Path) -> list[Path]:
    found = []
    for folder, subfolders, names in os.walk(class_dir, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(folder, name) for name in names
                  if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)
