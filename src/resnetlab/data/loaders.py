"""``build_loaders``: a ``DataConfig`` and the model's preprocessing in, train and val loaders out.

Everything that can be wrong with the data (layout, class sets, unreadable files, a missing
archive) is found here, before the first batch, and reported as one ``DataError`` line.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..preprocessing import Preprocessing
from . import cifar10
from .datasets import BadImage, CachedImages, ImageFiles, check_files, decode_files
from .decode import check_image_file
from .folders import Split, check_class_sets, file_list_hash, find_splits, scan_split
from .seeding import KeyedSampler
from .transforms import BatchTransform, batch_mix, eval_transform, runs_on_batches, train_transform

logger = logging.getLogger("resnetlab")

SMALL_IMAGE_SIDE = 64  # pixels: images no larger are "CIFAR-sized": cached in memory, cifar augmentation
SIZE_SAMPLE = 64  # files whose headers decide the image size before any decoding
MAX_WORKERS = 8  # more rarely helps one process's loader and costs memory per worker
MEMORY_SHARE = 0.5  # cache="memory" may use at most this share of the machine's RAM


@dataclass(frozen=True)
class DataInfo:
    """What the loaders hold: for the run's log, summary and manifest."""

    source: str  # the data folder or the CIFAR-10 archive
    class_names: tuple[str, ...]  # label i is class_names[i]
    num_train: int  # images in use (bad files left out), over all processes
    num_val: int
    val_split: str  # the evaluation split's folder name: "val" or "test"
    augment: str  # the training preset in use: "cifar" or "imagenet"
    image_size: tuple[int, int] | None  # (height, width) of images cached in memory; None if decoded per item
    bad_files: tuple[BadImage, ...]  # files left out, each with the reason
    file_list_hash: str  # sha256 over the sorted relative paths and sizes of the files in use

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        storage = (f"cached in memory at {self.image_size[0]}x{self.image_size[1]}" if self.image_size
                   else "decoded per item")
        bad = f"; {len(self.bad_files)} bad image(s) skipped" if self.bad_files else ""
        return (f"{self.source}: {self.num_classes} classes, {self.num_train:,} train / {self.num_val:,} "
                f"{self.val_split} images, {storage}, {self.augment} augmentation{bad}")


@dataclass(frozen=True)
class _Images:
    """The two splits before transforms: cached tensors, or files decoded per item."""

    source: str
    class_names: tuple[str, ...]
    val_split: str
    train: tuple[torch.Tensor, torch.Tensor] | Split  # (uint8 images, labels) when cached
    val: tuple[torch.Tensor, torch.Tensor] | Split
    small: bool  # CIFAR-sized: no side above SMALL_IMAGE_SIDE
    bad_files: tuple[BadImage, ...]
    file_list_hash: str


def preprocessing_at_input_size(preprocessing: Preprocessing, input_size: int | None) -> Preprocessing:
    """``preprocessing`` cropping to ``input_size`` (None: as it is), with the same resize-to-crop ratio
    (256/224 for ImageNet weights)."""
    if input_size is None:
        return preprocessing
    return dataclasses.replace(preprocessing, input_size=input_size,
                               resize_size=round(input_size * preprocessing.resize_size / preprocessing.input_size))


def build_loaders(config: DataConfig, preprocessing: Preprocessing, *, seed: int = 0, rank: int = 0,
                  world_size: int = 1) -> tuple[DataLoader, DataLoader, DataInfo]:
    """Train and val loaders for ``config``, fitted to the model's ``preprocessing``.

    Batches are ``(images, targets)``: float32 Bx3xSxS normalised images, and int64 labels,
    or (B, classes) soft targets when mixup/cutmix is on (train only). The train loader
    shuffles with ``seed``: call ``train_loader.sampler.set_epoch(epoch)`` every epoch for a
    new order. With ``world_size`` > 1 (``torch.distributed`` ranks) each process gets its
    own shard: the train shard from a ``DistributedSampler`` (``KeyedSampler``), the val shard
    without repeats, so each image is evaluated once over all processes. ``config.batch_size``
    is per process.
    Augmentation is a function of (``seed``, epoch, image index) alone (``seeding``): the same
    in a resumed run, with any number of workers, and it leaves torch's global RNG as it was.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not among world_size {world_size} processes")
    preprocessing = preprocessing_at_input_size(preprocessing, config.input_size)
    if config.data == "cifar10" or config.data.endswith(".tar.gz"):
        images = _cifar10_images(config)
    else:
        images = _folder_images(config)
    preset = config.augment if config.augment != "auto" else ("cifar" if images.small else "imagenet")
    train_set = _dataset(images.train, train_transform(preset, preprocessing, config.color_jitter,
                                                       config.auto_augment), config.bad_images)
    val_set = _dataset(images.val, eval_transform(preprocessing), config.bad_images)
    workers = config.workers
    if workers is None:
        # Whole-batch augmentation of cached images is cheaper than shipping batches between processes.
        in_process = isinstance(train_set, CachedImages) and train_set.batched
        workers = 0 if in_process else min(MAX_WORKERS, len(os.sched_getaffinity(0)))
    train_sampler = KeyedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    if len(train_sampler) < config.batch_size:
        raise DataError(f"{len(train_set)} training images make no full batch of {config.batch_size} "
                        f"on each of {world_size} process(es); lower the batch size (--batch-size)")
    mix = batch_mix(config.mixup_alpha, config.cutmix_alpha, len(images.class_names))
    train_loader = _loader(train_set, train_sampler, BatchTransform(preprocessing.mean, preprocessing.std, mix),
                           config.batch_size, workers, drop_last=True, seed=seed + rank)
    val_loader = _loader(val_set, EvalShard(len(val_set), rank, world_size),
                         BatchTransform(preprocessing.mean, preprocessing.std), config.batch_size, workers,
                         drop_last=False, seed=seed + rank)
    info = DataInfo(
        source=images.source, class_names=images.class_names, num_train=len(train_set), num_val=len(val_set),
        val_split=images.val_split, augment=preset,
        image_size=tuple(train_set.images.shape[2:]) if isinstance(train_set, CachedImages) else None,
        bad_files=images.bad_files, file_list_hash=images.file_list_hash)
    logger.info("data: %s", info.summary())
    return train_loader, val_loader, info


class EvalShard(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: together the processes cover each image once.

    ``DistributedSampler`` would pad the last shard with repeated images, which skews accuracy.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _loader(dataset: Dataset, sampler: Sampler, collate: BatchTransform, batch_size: int, workers: int,
            drop_last: bool, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      persistent_workers=workers > 0,
                      # Each new iterator draws its workers' seed from here. From the global RNG, the
                      # draw would shift dropout's after a resume, whose persistent workers start later.
                      generator=torch.Generator().manual_seed(seed))


def _dataset(split: tuple[torch.Tensor, torch.Tensor] | Split, transform, bad_images: str) -> Dataset:
    if isinstance(split, Split):
        return ImageFiles(split.files, split.labels, transform, bad_images)
    images, labels = split
    return CachedImages(images, labels, transform, batched=runs_on_batches(transform))


def _cifar10_images(config: DataConfig) -> _Images:
    if config.val_split not in (None, "test"):
        raise DataError(f"CIFAR-10 has a train and a test split only; leave val_split unset, "
                        f"not {config.val_split!r}")
    if config.cache == "none":
        raise ConfigError("the CIFAR-10 archive is always held in memory; cache='none' is for image folders")
    if config.data == "cifar10":
        download_dir = config.download_dir or cifar10.default_download_dir()
        path = cifar10.fetch_archive(download_dir, cifar10.CIFAR10_URL, cifar10.CIFAR10_MD5)
    else:
        path = cifar10.verify_archive(config.data, cifar10.CIFAR10_MD5)
    data = cifar10.load_archive(path)
    train = _first_per_class(data.train_images, data.train_labels, config.max_per_class)
    test = _first_per_class(data.test_images, data.test_labels, config.max_per_class)
    return _Images(source=str(path), class_names=data.class_names, val_split="test", train=train, val=test,
                   small=True, bad_files=(), file_list_hash=file_list_hash(path.parent, [path]))


def _first_per_class(images: torch.Tensor, labels: torch.Tensor, limit: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None:
        return images, labels
    seen: Counter[int] = Counter()
    keep = []
    for index, label in enumerate(labels.tolist()):
        seen[label] += 1
        if seen[label] <= limit:
            keep.append(index)
    index = torch.tensor(keep, dtype=torch.long)
    return images.index_select(0, index), labels.index_select(0, index)


def _folder_images(config: DataConfig) -> _Images:
    root = Path(config.data).expanduser()
    train_dir, val_dir = find_splits(root, config.val_split)
    train, val = scan_split(train_dir, config.max_per_class), scan_split(val_dir, config.max_per_class)
    check_class_sets(train, val)
    sizes = _sample_sizes(train)
    small = max(max(size) for size in sizes) <= SMALL_IMAGE_SIDE
    cache_size = Counter(sizes).most_common(1)[0][0]
    cache = config.cache if config.cache != "auto" else ("memory" if small else "none")
    if cache == "memory" and not _fits_in_memory(len(train.files) + len(val.files), cache_size,
                                                 required=config.cache == "memory"):
        cache = "none"
    (train_images, train_used, train_bad), (val_images, val_used, val_bad) = (
        _read_split(split, cache_size if cache == "memory" else None) for split in (train, val))
    bad = train_bad + val_bad
    _report_bad_images(bad, config.bad_images)
    for used in (train_used, val_used):
        missing = sorted(set(range(len(used.class_names))) - set(used.labels))
        if missing:
            raise DataError(f"{used.root / used.class_names[missing[0]]} has no readable images; "
                            "fix the bad files listed above or remove the class")
    return _Images(source=str(root), class_names=train.class_names, val_split=val_dir.name,
                   train=train_images, val=val_images, small=small, bad_files=tuple(bad),
                   file_list_hash=file_list_hash(root, [*train_used.files, *val_used.files]))


def _read_split(split: Split, cache_size: tuple[int, int] | None
                ) -> tuple[tuple[torch.Tensor, torch.Tensor] | Split, Split, list[BadImage]]:
    """Decode ``split`` into memory at ``cache_size``, or (None) only check its files.

    Returns what the dataset is built from, the split's good files, and its bad files.
    """
    if cache_size is None:
        good, bad = check_files(split.files)
        return split.subset(good), split.subset(good), bad
    images, good, bad = decode_files(split.files, cache_size)
    used = split.subset(good)
    return (images, torch.tensor(used.labels, dtype=torch.int64)), used, bad


def _sample_sizes(split: Split) -> list[tuple[int, int]]:
    """(height, width) from the headers of up to ``SIZE_SAMPLE`` files spread over all classes."""
    step = max(1, len(split.files) // SIZE_SAMPLE)
    sizes, reasons = [], []
    for path in split.files[::step]:
        try:
            sizes.append(check_image_file(path))
        except DataError as error:
            reasons.append(str(error))
    if not sizes:
        raise DataError(f"none of the {len(reasons)} images sampled from {split.root} can be read "
                        f"(first: {reasons[0]}); is it an image folder?")
    return sizes


def _fits_in_memory(count: int, size: tuple[int, int], required: bool) -> bool:
    needed = count * 3 * size[0] * size[1]
    budget = MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed <= budget:
        return True
    message = (f"caching {count:,} images of {size[0]}x{size[1]} takes {needed / 2**30:.1f} GiB, more than "
               f"{MEMORY_SHARE:.0%} of this machine's memory")
    if required:
        raise DataError(f"{message}; use cache='none' to decode them per item")
    logger.info("%s: decoding them per item instead", message)
    return False


def _report_bad_images(bad: Sequence[BadImage], policy: str) -> None:
    if not bad:
        return
    if policy == "error":
        more = f" (and {len(bad) - 1} more bad images)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0].reason}{more}; fix or remove it, or leave bad images out: "
                        "--bad-images skip (bad_images='skip')")
    logger.warning("left out %d bad image(s):\n%s", len(bad), "\n".join(f"  {b.reason}" for b in bad))


def build_eval_loader(config: DataConfig, preprocessing: Preprocessing,
                      class_names: Sequence[str] | None = None) -> tuple[DataLoader, DataInfo]:
    """A loader over one labelled split, its labels numbered as the model's ``class_names``.

    ``config.data`` is a folder holding ``val/`` or ``test/`` (or ``config.val_split``), a
    folder of class folders itself, or CIFAR-10 (its test split). The folder may hold a
    subset of the model's classes; a class the model does not know is an error.
    """
    if config.data == "cifar10" or config.data.endswith(".tar.gz"):
        images = _cifar10_images(config)
        split_name, source, data, found_names = "test", images.source, images.val, images.class_names
        bad, file_hash = (), images.file_list_hash
    else:
        root = Path(config.data).expanduser()
        split_dir = _eval_split_dir(root, config.val_split)
        split = scan_split(split_dir, config.max_per_class)
        small = max(max(size) for size in _sample_sizes(split)) <= SMALL_IMAGE_SIDE
        cache = config.cache if config.cache != "auto" else ("memory" if small else "none")
        size = Counter(_sample_sizes(split)).most_common(1)[0][0] if cache == "memory" else None
        data, used, bad = _read_split(split, size)
        _report_bad_images(bad, config.bad_images)
        split_name, source, found_names = split_dir.name, str(split_dir), split.class_names
        file_hash = file_list_hash(root, list(used.files))
    names = tuple(class_names) if class_names is not None else found_names
    unknown = [name for name in found_names if name not in names]
    if unknown:
        raise DataError(f"{source} has classes the model does not know: {', '.join(unknown)} "
                        f"(it knows {', '.join(names)})")
    to_model = torch.tensor([names.index(name) for name in found_names])
    if isinstance(data, Split):
        data = Split(data.root, names, data.files, tuple(to_model[label].item() for label in data.labels))
    else:
        data = (data[0], to_model[data[1]])
    dataset = _dataset(data, eval_transform(preprocessing), config.bad_images)
    workers = config.workers if config.workers is not None else \
        (0 if isinstance(dataset, CachedImages) else min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    loader = _loader(dataset, EvalShard(len(dataset), 0, 1), BatchTransform(preprocessing.mean, preprocessing.std),
                     config.batch_size, workers, drop_last=False, seed=0)
    info = DataInfo(source=source, class_names=names, num_train=0, num_val=len(dataset), val_split=split_name,
                    augment="none", image_size=tuple(dataset.images.shape[2:]) if isinstance(dataset, CachedImages)
                    else None, bad_files=tuple(bad), file_list_hash=file_hash)
    return loader, info


def _eval_split_dir(root: Path, val_split: str | None) -> Path:
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; expected {root}/val/<class>/*.jpg "
                        f"or {root}/<class>/*.jpg")
    for name in (val_split,) if val_split is not None else ("val", "test"):
        if (root / name).is_dir():
            return root / name
    if val_split is not None:
        raise DataError(f"{root}/{val_split} does not exist")
    return root  # class folders directly under root
