"""An image file as the input a model expects: decoded, resized, centre-cropped, normalised."""
from __future__ import annotations

import os

import torch
from torchvision.transforms import v2

from .data.decode import decode_image_file
from .data.transforms import eval_transform
from .preprocessing import Preprocessing


def read_crop(path: str | os.PathLike, preprocessing: Preprocessing) -> torch.Tensor:
    """The image at ``path`` as the model sees it, before normalisation: uint8 3xSxS RGB.

    Raises ``DataError`` naming the file if it cannot be decoded.
    """
    return eval_transform(preprocessing)(decode_image_file(path))


def normalize(crops: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 crops (3xSxS or a batch of them) to the float32 input of the model."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(preprocessing.mean, preprocessing.std)])(crops)
