"""build_loaders on the real datasets: CIFAR-10 JPEGs and hymenoptera photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import build_loaders
from resnetlab.preprocessing import CIFAR10, IMAGENET

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _normalised(path, preprocessing) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(preprocessing.mean).view(3, 1, 1), torch.tensor(preprocessing.std).view(3, 1, 1)
    return (pixels - mean) / std


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory, cifar10_root) -> Path:
    """Symlinks to the first 20 train and 20 test images of each class: scanned in no time."""
    root = tmp_path_factory.mktemp("cifar_subset")
    for split in ("train", "test"):
        for name in CIFAR10_CLASSES:
            (root / split / name).mkdir(parents=True)
            for file in (f"{index:04d}.jpg" for index in range(20)):
                (root / split / name / file).symlink_to(cifar10_root / split / name / file)
    return root


def _cifar(root, **options):
    return build_loaders(DataConfig(data=str(root), batch_size=50, workers=0, **options), CIFAR10)


def test_max_per_class_takes_the_first_images_of_each_class(cifar10_root, cifar_subset):
    _, _, subset_info = _cifar(cifar_subset)
    _, _, info = _cifar(cifar10_root, max_per_class=20)
    assert (info.num_train, info.num_val) == (200, 200)
    assert info.file_list_hash == subset_info.file_list_hash  # the same relative paths and sizes


def test_cifar_folder_is_cached_and_gives_normalised_float_batches(cifar_subset):
    train_loader, val_loader, info = _cifar(cifar_subset)
    assert info.class_names == CIFAR10_CLASSES  # sorted folder names are the official label order
    assert (info.num_train, info.num_val, info.val_split) == (200, 200, "test")
    assert info.image_size == (32, 32) and info.augment == "cifar" and not info.bad_files
    images, labels = next(iter(train_loader))
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 9
    val_images = torch.cat([images for images, _ in val_loader])
    assert abs(val_images.mean()) < 0.3 and 0.7 < val_images.std() < 1.3  # the CIFAR statistics fit


def test_val_batches_hold_the_files_in_order_with_their_labels(cifar_subset):
    _, val_loader, _ = _cifar(cifar_subset)
    images, labels = zip(*val_loader)
    images, labels = torch.cat(images), torch.cat(labels)
    assert labels.tolist() == [label for label in range(10) for _ in range(20)]
    torch.testing.assert_close(images[0], _normalised(cifar_subset / "test" / "airplane" / "0000.jpg", CIFAR10))
    torch.testing.assert_close(images[-1], _normalised(cifar_subset / "test" / "truck" / "0019.jpg", CIFAR10))


def test_cached_and_per_item_loading_give_the_same_val_batches(cifar_subset):
    _, cached, cached_info = _cifar(cifar_subset, cache="memory")
    _, per_item, per_item_info = _cifar(cifar_subset, cache="none")
    assert per_item_info.image_size is None
    assert cached_info.file_list_hash == per_item_info.file_list_hash
    for (a, a_labels), (b, b_labels) in zip(cached, per_item, strict=True):
        assert torch.equal(a, b) and torch.equal(a_labels, b_labels)


def test_train_order_is_seeded_and_changes_with_set_epoch(cifar_subset):
    def epoch_labels(seed: int, epoch: int) -> list[int]:
        train_loader, _, _ = build_loaders(DataConfig(data=str(cifar_subset), batch_size=50, workers=0), CIFAR10,
                                           seed=seed)
        train_loader.sampler.set_epoch(epoch)
        return torch.cat([labels for _, labels in train_loader]).tolist()

    first = epoch_labels(seed=0, epoch=0)
    assert epoch_labels(seed=0, epoch=0) == first
    assert epoch_labels(seed=0, epoch=1) != first
    assert epoch_labels(seed=1, epoch=0) != first


def test_distributed_ranks_share_out_train_and_val_images(cifar_subset):
    config = DataConfig(data=str(cifar_subset), batch_size=10, workers=0)
    train_indices, val_indices = [], []
    for rank in range(3):
        train_loader, val_loader, _ = build_loaders(config, CIFAR10, seed=5, rank=rank, world_size=3)
        train_loader.sampler.set_epoch(2)
        keys = list(train_loader.sampler)
        assert {(key.seed, key.epoch) for key in keys} == {(5, 2)}  # with the index, they fix the augmentation
        shard = [key.index for key in keys]
        assert len(shard) == 67 and len(train_loader) == 6
        train_indices += shard
        val_indices += list(val_loader.sampler)
    # DistributedSampler pads 200 images to 3 x 67 with one repeat; evaluation must not repeat any.
    assert len(train_indices) == 201 and set(train_indices) == set(range(200))
    assert sorted(val_indices) == list(range(200))


def test_input_size_override_resizes_batches(cifar_subset):
    train_loader, val_loader, _ = _cifar(cifar_subset, input_size=48)
    assert next(iter(train_loader))[0].shape == (50, 3, 48, 48)
    assert next(iter(val_loader))[0].shape == (50, 3, 48, 48)


def test_randaugment_on_cached_images_runs_per_image(cifar_subset):
    train_loader, _, _ = _cifar(cifar_subset, auto_augment="randaugment", color_jitter=0.4)
    assert not train_loader.dataset.batched
    images, labels = next(iter(train_loader))
    assert images.shape == (50, 3, 32, 32) and labels.shape == (50,)


def test_mixup_batches_from_the_loader_carry_soft_targets(cifar_subset):
    train_loader, val_loader, _ = _cifar(cifar_subset, mixup_alpha=0.2, cutmix_alpha=1.0)
    images, targets = next(iter(train_loader))
    assert targets.shape == (50, 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(50))
    assert next(iter(val_loader))[1].dtype == torch.int64  # evaluation is never mixed


@pytest.mark.parametrize("split", ["train", "val"])
def test_hymenoptera_photos_decode_per_item_to_224_crops(hymenoptera_root, split):
    config = DataConfig(data=str(hymenoptera_root), batch_size=32, workers=2)
    train_loader, val_loader, info = build_loaders(config, IMAGENET)
    assert info.class_names == ("ants", "bees") and not info.bad_files
    assert (info.num_train, info.num_val) == (245, 153)  # the palette GIF in train/ants is in
    assert info.image_size is None and info.augment == "imagenet"
    loader = train_loader if split == "train" else val_loader
    count = 0
    for images, labels in loader:
        assert images.shape[1:] == (3, 224, 224) and images.dtype == torch.float32
        count += len(labels)
    assert count == (224 if split == "train" else 153)  # train drops its last partial batch
