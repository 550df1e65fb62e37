"""Datasets of (image, label): decoded once into memory, or decoded per item from disk.

Both hand the DataLoader whole batches through ``__getitems__``: a uint8 Bx3xSxS tensor,
int64 labels and the batch's keys, which ``transforms.BatchTransform`` (the collate function)
turns into the model's float input. Augmentation that can run on a whole batch does, in one pass.
A key is an index, or a ``SampleKey`` from the train sampler, which also fixes the item's random
augmentation (``seeding``); a whole-batch one is fixed by all the batch's keys.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import DataError
from .decode import check_image_file, decode_image_file
from .seeding import Key, index_of, seeded_by

logger = logging.getLogger("resnetlab")

Transform = Callable[[torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor, Sequence[Key]]  # uint8 images, int64 labels, their keys


@dataclass(frozen=True)
class BadImage:
    """A file left out of the data, and why."""

    path: Path
    reason: str  # the DataError's message


class CachedImages(Dataset):
    """Images held as one uint8 Nx3xHxW tensor; ``transform`` runs on whole batches if it can."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform,
                 batched: bool):
        self.images = images
        self.labels = labels
        self.transform = transform
        self.batched = batched  # the transform draws its randomness per image even on a batch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        index = index_of(key)
        return self._augment(self.images[index], key), int(self.labels[index])

    def __getitems__(self, keys: Sequence[Key]) -> Batch:
        index = torch.as_tensor([index_of(key) for key in keys])
        images = self.images.index_select(0, index)  # far cheaper than images[index]
        if self.batched:
            with seeded_by(keys, "batch"):
                images = self.transform(images)
        else:
            images = torch.stack([self._augment(image, key) for image, key in zip(images, keys)])
        return images, self.labels.index_select(0, index), keys

    def _augment(self, image: torch.Tensor, key: Key) -> torch.Tensor:
        with seeded_by((key,), "item"):
            return self.transform(image)


class ImageFiles(Dataset):
    """Image files decoded when an item is asked for, in the DataLoader's workers.

    Files were checked up front (``check_files``); one that still fails to decode is
    replaced by the next good file with a warning, so an epoch never stops half-way,
    unless ``bad_images="error"``.
    """

    def __init__(self, files: Sequence[Path], labels: Sequence[int], transform: Transform,
                 bad_images: str):
        self.files = list(files)
        self.labels = list(labels)
        self.transform = transform
        self.bad_images = bad_images

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        index = index_of(key)
        for offset in range(len(self.files)):
            candidate = (index + offset) % len(self.files)
            try:
                image = decode_image_file(self.files[candidate])
                with seeded_by((key,), "item"):  # a replacement file is augmented as the bad one would be
                    return self.transform(image), self.labels[candidate]
            except DataError as error:
                if self.bad_images == "error":
                    raise
                logger.warning("skipped a bad image during the epoch (it passed the up-front check): %s",
                               error)
        raise DataError(f"none of the {len(self.files)} images could be decoded")

    def __getitems__(self, keys: Sequence[Key]) -> Batch:
        items = [self[key] for key in keys]
        return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items]), keys


def check_files(files: Sequence[Path]) -> tuple[list[int], list[BadImage]]:
    """Header-check every file; return the indices of the good ones and the bad ones."""
    good, bad = [], []
    for index, path in enumerate(files):
        try:
            check_image_file(path)
            good.append(index)
        except DataError as error:
            bad.append(BadImage(path, str(error)))
    return good, bad


def decode_files(files: Sequence[Path], size: tuple[int, int]
                 ) -> tuple[torch.Tensor, list[int], list[BadImage]]:
    """Decode every file into one uint8 Nx3xHxW tensor of (H, W) = ``size``, for ``CachedImages``.

    An image of another size (a 1x1 icon among 32x32 photos) is resized on its shorter side
    and centre-cropped to ``size``, and counted in a warning. Returns the tensor, which holds
    only the good files, their indices in ``files``, and the bad files.
    """
    height, width = size
    fit = v2.Compose([v2.Resize(min(height, width)), v2.CenterCrop((height, width))])
    images = torch.empty(len(files), 3, height, width, dtype=torch.uint8)
    good, bad, resized = [], [], 0
    for index, path in enumerate(files):
        try:
            image = decode_image_file(path)
        except DataError as error:
            bad.append(BadImage(path, str(error)))
            continue
        if image.shape[1:] != size:
            image = fit(image)
            resized += 1
        images[index] = image
        good.append(index)
    if resized:
        logger.warning("%d of %d images were not %dx%d and were resized to it to be cached in memory",
                       resized, len(good), height, width)
    if bad:
        images = images.index_select(0, torch.tensor(good, dtype=torch.long))
    return images, good, bad
