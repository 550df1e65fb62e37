"""Real photos (ants, bees) with real CIFAR-10 objects pasted at known places: detection and
segmentation data whose boxes and masks are exact."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

CANVAS = (120, 160)  # height, width of each image
OBJECT_SIDE = 48  # a 32x32 CIFAR image upscaled and pasted: its box is exact
OBJECT_CLASSES = ("cat", "ship")  # labels 1 and 2; 0 is the background


def _read_rgb(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def pasted_scenes(hymenoptera_root, cifar10_root, count: int) -> tuple[list[torch.Tensor], list[dict]]:
    """``count`` photos, each with two CIFAR objects; targets hold their ``boxes`` and ``labels``."""
    backgrounds = sorted((hymenoptera_root / "train" / "ants").glob("*.jpg"))[:count]
    images, targets = [], []
    for i, background in enumerate(backgrounds):
        canvas = TF.resize(_read_rgb(background), list(CANVAS))
        boxes, labels = [], []
        for label, (name, (top, left)) in enumerate(zip(OBJECT_CLASSES, [(8 + 4 * i, 10 + 6 * i),
                                                                          (60 - 3 * i, 100 - 5 * i)]), 1):
            source = sorted((cifar10_root / "test" / name).glob("*.jpg"))[i]
            patch = TF.resize(_read_rgb(source), [OBJECT_SIDE] * 2)
            canvas[:, top:top + OBJECT_SIDE, left:left + OBJECT_SIDE] = patch
            boxes.append([left, top, left + OBJECT_SIDE, top + OBJECT_SIDE])
            labels.append(label)
        images.append(canvas.float() / 255)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def masks_of(targets: list[dict]) -> torch.Tensor:
    """Per-pixel labels (0 the photo, then each object's label) from the pasted boxes."""
    masks = torch.zeros(len(targets), *CANVAS, dtype=torch.int64)
    for mask, target in zip(masks, targets):
        for (left, top, right, bottom), label in zip(target["boxes"].int().tolist(), target["labels"].tolist()):
            mask[top:bottom, left:right] = label
    return masks
