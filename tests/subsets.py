"""Small real subsets of CIFAR-10 as image folders of symlinks (no copying)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# Halves of CIFAR-10's classes by label index, each mixing animals and vehicles so that neither is a domain of its own.
SOURCE_CLASSES = (0, 2, 3, 6, 8)  # airplane, bird, cat, frog, ship
TARGET_CLASSES = (1, 4, 5, 7, 9)  # automobile, deer, dog, horse, truck


def cifar_subset(cifar_root: Path, into: Path, train_per_class: int, test_per_class: int,
                 classes: Iterable[int] | None = None) -> Path:
    """``into/{train,test}/<class>/`` with the first N images of each chosen class (by label index)."""
    names = sorted(path.name for path in (cifar_root / "train").iterdir())
    chosen = [names[i] for i in classes] if classes is not None else names
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in chosen:
            folder = into / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for image in sorted((cifar_root / split / name).iterdir())[:count]:
                (folder / image.name).symlink_to(image)
    return into
