"""Augmentation presets, the whole-batch CIFAR shift/flip, normalisation and mixup/cutmix."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnetlab.data.transforms import (BatchTransform, RandomShiftFlip, batch_mix, eval_transform,
                                       runs_on_batches, train_transform)
from resnetlab.errors import ConfigError
from resnetlab.preprocessing import CIFAR10, IMAGENET


def _all_shifts_and_flips(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """The reference: v1 CIFAR augmentation spelled out, pad then every crop, with and without flip."""
    _, height, width = image.shape
    padded = F.pad(image, (padding,) * 4)
    crops = [padded[:, y:y + height, x:x + width]
             for y in range(2 * padding + 1) for x in range(2 * padding + 1)]
    return crops + [crop.flip(-1) for crop in crops]


def test_shift_flip_gives_each_image_of_a_batch_its_own_pad_crop_and_flip():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 12, 10), dtype=torch.uint8)  # non-square, no zero pixels
    out = RandomShiftFlip(padding=3)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    chosen = []
    for image, augmented in zip(images, out):
        matches = [i for i, candidate in enumerate(_all_shifts_and_flips(image, 3))
                   if torch.equal(candidate, augmented)]
        assert len(matches) == 1
        chosen.append(matches[0])
    assert len(set(chosen)) > 20  # independent per image, not one shift for the batch
    flipped = sum(index >= 49 for index in chosen)
    assert 16 < flipped < 48


def test_shift_flip_on_a_single_image():
    image = torch.randint(1, 256, (3, 8, 8), dtype=torch.uint8)
    out = RandomShiftFlip(padding=2)(image)
    assert any(torch.equal(out, candidate) for candidate in _all_shifts_and_flips(image, 2))


def test_cifar_preset_runs_on_batches_and_keeps_32px_images_at_32px():
    transform = train_transform("cifar", CIFAR10)
    assert runs_on_batches(transform) and runs_on_batches(eval_transform(CIFAR10))
    batch = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert transform(batch).shape == (5, 3, 32, 32)
    assert torch.equal(eval_transform(CIFAR10)(batch), batch)  # resize 32, crop 32: nothing to do


@pytest.mark.parametrize("preset, extras", [("imagenet", {}), ("cifar", {"color_jitter": 0.4}),
                                            ("cifar", {"auto_augment": "randaugment"})])
def test_presets_with_batch_wide_randomness_are_applied_per_image(preset, extras):
    assert not runs_on_batches(train_transform(preset, CIFAR10, **extras))


@pytest.mark.parametrize("auto_augment", [None, "randaugment", "autoaugment-imagenet", "autoaugment-cifar10"])
def test_imagenet_preset_crops_any_image_to_the_input_size(auto_augment):
    transform = train_transform("imagenet", IMAGENET, color_jitter=0.4, auto_augment=auto_augment)
    for height, width in ((375, 500), (1, 1), (224, 97)):
        out = transform(torch.randint(0, 256, (3, height, width), dtype=torch.uint8))
        assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_eval_transform_resizes_the_shorter_side_then_centre_crops():
    image = torch.zeros(3, 300, 600, dtype=torch.uint8)
    image[:, :, 300:] = 255  # right half white
    out = eval_transform(IMAGENET)(image)  # 256x512, then the central 224x224
    assert out.shape == (3, 224, 224)
    assert (out[:, :, :100] == 0).all() and (out[:, :, 124:] == 255).all()


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown augmentation preset 'auto'"):
        train_transform("auto", CIFAR10)


def test_batch_transform_normalises_with_the_preprocessing_statistics():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).repeat(2, 1, 2, 2)
    labels = torch.tensor([3, 7])
    out, targets = BatchTransform(CIFAR10.mean, CIFAR10.std)((images, labels, [0, 1]))
    mean, std = torch.tensor(CIFAR10.mean).view(1, 3, 1, 1), torch.tensor(CIFAR10.std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)
    assert torch.equal(targets, labels)


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one(mixup, cutmix):
    torch.manual_seed(0)
    collate = BatchTransform(CIFAR10.mean, CIFAR10.std, batch_mix(mixup, cutmix, num_classes=10))
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 10  # neighbours always differ
    own, partner = F.one_hot(labels, 10).float(), F.one_hot(labels.roll(1), 10).float()
    weights = []
    for _ in range(4):
        out, targets = collate((images, labels, list(range(16))))  # plain indices: the global RNG
        assert out.shape == (16, 3, 32, 32) and targets.shape == (16, 10)
        torch.testing.assert_close(targets.sum(1), torch.ones(16))
        # Each image is mixed with its neighbour in the batch, weighted as its pixels were.
        weight = targets[0, labels[0]]
        torch.testing.assert_close(targets, weight * own + (1 - weight) * partner)
        weights.append(float(weight))
    assert any(0 < weight < 1 for weight in weights)


def test_no_mixing_without_alphas():
    assert batch_mix(0.0, 0.0, num_classes=10) is None
