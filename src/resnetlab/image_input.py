"""An image file as the input a model expects: decoded, resized, centre-cropped, normalised."""
from __future__ import annotations

import os

import torch
from torchvision.transforms import v2

from .data.decode import decode_image_file
from .data.transforms import eval_transform
from .errors import ConfigError
from .preprocessing import Preprocessing


def check_reads_image_files(in_chans: int) -> None:
    """Image files are decoded to 3-channel RGB (grayscale ones too): a model of another input width
    cannot take them. Called before any work by every command that feeds a model image files."""
    if in_chans != 3:
        raise ConfigError(f"this model takes {in_chans}-channel input, and image files are read as 3-channel RGB "
                          f"(grayscale ones too): for image files use in_chans=3; a model of in_chans={in_chans} "
                          "runs on tensors you prepare in Python")


def read_crop(path: str | os.PathLike, preprocessing: Preprocessing) -> torch.Tensor:
    """The image at ``path`` as the model sees it, before normalisation: uint8 3xSxS RGB.

    Raises ``DataError`` naming the file if it cannot be decoded.
    """
    return eval_transform(preprocessing)(decode_image_file(path))


def normalize(crops: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 crops (3xSxS or a batch of them) to the float32 input of the model."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(preprocessing.mean, preprocessing.std)])(crops)
