"""Augmentation presets (torchvision.transforms.v2 on uint8 tensors) and the batch step.

A preset maps a 3xHxW uint8 image to a 3xSxS uint8 crop (S = the model's input size).
``BatchTransform`` then turns a batch of them into normalised float32, and applies
mixup/cutmix, which need the whole batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from ..errors import ConfigError
from ..preprocessing import Preprocessing
from .seeding import Key, seeded_by

CIFAR_SHIFT = 4  # pixels: the pad-4-and-crop of He et al. 2016, section 4.2
RANDAUGMENT_MAGNITUDE = 9  # torchvision's reference ImageNet recipes use 9 (of 31 levels)


class RandomShiftFlip(nn.Module):
    """Shift each image by up to ``padding`` pixels (zero fill) and mirror it with p = 1/2.

    This is the CIFAR augmentation (pad, random crop back to size, flip). Unlike v2's
    RandomCrop and RandomHorizontalFlip, every image of a batch draws its own shift and flip,
    so a whole cached batch is augmented at once, by a single gather.
    """

    def __init__(self, padding: int = CIFAR_SHIFT):
        super().__init__()
        self.padding = padding

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images if images.ndim == 4 else images.unsqueeze(0)
        n, channels, height, width = batch.shape
        pad, device = self.padding, batch.device  # on the GPU too, if the batch is there
        shift_y = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=device)
        shift_x = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=device)
        flip = torch.rand(n, 1, 1, device=device) < 0.5
        rows = torch.arange(height, device=device).view(1, height, 1) + shift_y
        columns = torch.arange(width, device=device).view(1, 1, width)
        columns = torch.where(flip, width - 1 - columns, columns) + shift_x
        # Flat index of each output pixel in the padded image; one map per image.
        index = (rows * (width + 2 * pad) + columns).view(n, 1, height * width)
        padded = F.pad(batch, (pad, pad, pad, pad)).view(n, channels, -1)
        out = padded.gather(2, index.expand(n, channels, height * width)).view(n, channels, height, width)
        return out if images.ndim == 4 else out[0]


def eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """Resize the shorter side, centre-crop: the model's preprocessing, as its weights expect."""
    return v2.Compose([
        v2.Resize(preprocessing.resize_size, interpolation=_interpolation(preprocessing)),
        v2.CenterCrop(preprocessing.input_size),
    ])


def train_transform(preset: str, preprocessing: Preprocessing, color_jitter: float = 0.0,
                    auto_augment: str | None = None) -> v2.Compose:
    """The training augmentation of ``preset`` ("imagenet" or "cifar") with the optional extras.

    "imagenet": random-resized crop (8%..100% of the area) to the input size and a flip.
    "cifar": random shift and flip at the image's own size, then the evaluation resize and
    crop (no-ops for 32x32 images and a 32 px model), so train and eval see the same scale.
    """
    interpolation = _interpolation(preprocessing)
    if preset == "imagenet":
        steps = [v2.RandomResizedCrop(preprocessing.input_size, interpolation=interpolation),
                 v2.RandomHorizontalFlip()]
    elif preset == "cifar":
        steps = [RandomShiftFlip(CIFAR_SHIFT), *eval_transform(preprocessing).transforms]
    elif preset == "none":
        steps = list(eval_transform(preprocessing).transforms)
    else:
        raise ConfigError(f"unknown augmentation preset {preset!r}; choose imagenet, cifar or none")
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    if auto_augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=RANDAUGMENT_MAGNITUDE, interpolation=interpolation))
    elif auto_augment is not None:
        policy = {"autoaugment-imagenet": v2.AutoAugmentPolicy.IMAGENET,
                  "autoaugment-cifar10": v2.AutoAugmentPolicy.CIFAR10}[auto_augment]
        steps.append(v2.AutoAugment(policy, interpolation=interpolation))
    return v2.Compose(steps)


def runs_on_batches(transform: v2.Compose) -> bool:
    """True if ``transform`` may be called on a whole batch of same-size images at once.

    v2's random transforms draw one set of parameters per call, which on a batch would give
    every image the same crop or colour change; only per-image or deterministic steps qualify.
    """
    return all(isinstance(step, (RandomShiftFlip, v2.Resize, v2.CenterCrop)) for step in transform.transforms)


def batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> nn.Module | None:
    """MixUp and/or CutMix on a float batch, giving soft targets; with both, each batch picks one."""
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if len(mixes) > 1:
        return v2.RandomChoice(mixes)
    return mixes[0] if mixes else None


class BatchTransform:
    """The DataLoader's collate function: a uint8 batch to normalised float32, then mixed.

    Receives ``(images, labels, keys)`` from the datasets' ``__getitems__``; returns float32
    Bx3xSxS images and int64 labels of shape (B,), or float (B, classes) soft targets summing
    to 1 when mixing. Training ``SampleKey``s fix the batch's mixing. It runs in the loader's
    workers, so the main process only trains.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], mix: nn.Module | None = None):
        std_ = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = 1 / (255 * std_)  # (x / 255 - mean) / std as one multiply and one subtract
        self.shift = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_
        self.mix = mix

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor, Sequence[Key]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, keys = batch
        images = images.float().mul_(self.scale).sub_(self.shift)
        if self.mix is not None:
            with seeded_by(keys, "mix"):
                images, labels = self.mix(images, labels)
        return images, labels


def _interpolation(preprocessing: Preprocessing) -> v2.InterpolationMode:
    return v2.InterpolationMode(preprocessing.interpolation)
