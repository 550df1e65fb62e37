"""Training augmentation depends on (seed, epoch, image) alone: not on the epochs before, the
worker count, or torch's global RNG. That is what makes a resumed run's batches the killed run's."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from resnetlab.config import DataConfig
from resnetlab.data import build_loaders
from resnetlab.data.seeding import SampleKey
from resnetlab.data.transforms import BatchTransform, batch_mix
from resnetlab.preprocessing import CIFAR10, IMAGENET

SEED = 3
# Each data path that draws randomness: photos decoded per item, CIFAR-sized images cached in memory.
SETUPS = {
    "photos, random-resized crop": ("hymenoptera_root", dict(augment="imagenet")),
    "photos, randaugment and colour jitter": ("hymenoptera_root", dict(auto_augment="randaugment", color_jitter=0.4)),
    "cached, shift and flip of whole batches": ("cifar10_root", dict()),
    "cached, randaugment per image": ("cifar10_root", dict(auto_augment="randaugment")),
    "cached, mixup or cutmix": ("cifar10_root", dict(mixup_alpha=0.2, cutmix_alpha=1.0)),
}


def _config(request, setup: str, workers: int) -> tuple[DataConfig, object]:
    root, options = SETUPS[setup]
    photos = root == "hymenoptera_root"
    # Two batches of photos, five of CIFAR images; small crops, as decoding is the cost.
    config = DataConfig(data=str(request.getfixturevalue(root)), batch_size=8, max_per_class=8 if photos else 4,
                        workers=workers, input_size=32 if photos else None, **options)
    return config, IMAGENET if photos else CIFAR10


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("setup", SETUPS)
def test_an_epoch_gives_the_same_batches_whatever_ran_before_and_with_0_or_2_workers(setup, request):
    config, preprocessing = _config(request, setup, workers=0)
    fresh, _, _ = build_loaders(config, preprocessing, seed=SEED)
    torch.rand(5)  # a main process that drew from the global RNG meanwhile, as training does
    expected = _epoch(fresh, 1)
    # Persistent workers that already ran an epoch: what a resumed run's workers never did.
    with_workers, _, _ = build_loaders(dataclasses.replace(config, workers=2), preprocessing, seed=SEED)
    first = _epoch(with_workers, 0)
    got = _epoch(with_workers, 1)
    for (images, targets), (expected_images, expected_targets) in zip(got, expected, strict=True):
        assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)
    assert not torch.equal(first[0][0], got[0][0])  # and the next epoch is another one


def test_an_images_augmentation_is_fixed_by_its_key_and_leaves_the_global_rng_as_it_was(hymenoptera_root):
    config = DataConfig(data=str(hymenoptera_root), max_per_class=8, batch_size=8, workers=0, input_size=32,
                        auto_augment="randaugment")
    dataset = build_loaders(config, IMAGENET, seed=SEED)[0].dataset
    key = SampleKey(seed=SEED, epoch=2, index=5)
    image, label = dataset[key]
    dataset[SampleKey(SEED, 0, 1)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again, again_label = dataset[key]
    assert torch.equal(again, image) and again_label == label
    assert torch.equal(torch.get_rng_state(), state)  # dropout in the main process draws as without loading
    assert not torch.equal(dataset[key._replace(epoch=3)][0], image)
    assert not torch.equal(dataset[key._replace(seed=SEED + 1)][0], image)


def test_a_batchs_mixup_or_cutmix_is_fixed_by_its_keys_and_leaves_the_global_rng_as_it_was():
    collate = BatchTransform(CIFAR10.mean, CIFAR10.std, batch_mix(0.2, 1.0, num_classes=10))
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 10
    keys = [SampleKey(SEED, 1, index) for index in range(16)]
    mixed, targets = collate((images, labels, keys))
    torch.rand(3)
    state = torch.get_rng_state()
    again, again_targets = collate((images, labels, keys))
    assert torch.equal(again, mixed) and torch.equal(again_targets, targets)
    assert torch.equal(torch.get_rng_state(), state)
    other_epochs = [collate((images, labels, [key._replace(epoch=epoch) for key in keys]))[1] for epoch in range(4)]
    assert any(not torch.equal(other, targets) for other in other_epochs)
