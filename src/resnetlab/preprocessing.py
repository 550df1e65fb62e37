"""The input a model expects: size, resize, normalisation. Travels with saved weights."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessing:
    input_size: int  # side of the square crop fed to the network, pixels
    resize_size: int  # shorter side is resized to this before the centre crop, pixels
    mean: tuple[float, float, float]  # per-channel, on 0..1 pixel values
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # Lists come back from JSON metadata; keep the dataclass hashable and comparable.
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))


# torchvision's ImageNet evaluation transform: resize 256, centre crop 224.
IMAGENET = Preprocessing(
    input_size=224, resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
# CIFAR-10 training-set statistics; the images are already 32x32, so no resize or crop.
CIFAR10 = Preprocessing(
    input_size=32, resize_size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
)
