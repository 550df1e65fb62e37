"""``resnetlab demo``: the main job end to end on real data shipped inside the package.

Trains a CIFAR ResNet-20 on 5,000 real CIFAR-10 images for about a minute on a CPU,
evaluates it on 1,000 held-out images, predicts a few of them, and shows how to train on
your own folder.
"""
from __future__ import annotations

import tarfile
import time
from importlib.resources import as_file, files
from pathlib import Path

ARCHIVE = "cifar10-mini.tar.gz"
DATA_FOLDER = "cifar10-mini"  # train/<class>/*.jpg (500 a class) and test/<class>/*.jpg (100 a class)


def extract_demo_data(into: Path) -> Path:
    """The packaged images as an image folder under ``into`` (extracted once)."""
    root = into / DATA_FOLDER
    if not (root / "test").is_dir():
        into.mkdir(parents=True, exist_ok=True)
        with as_file(files(__package__) / ARCHIVE) as archive, tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    return root


def new_run_dir(out: Path) -> Path:
    """A fresh run folder per demo, so a second `make demo` never overwrites the first."""
    return out / time.strftime("run-%Y%m%d-%H%M%S")
