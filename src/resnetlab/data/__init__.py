"""Images in, batches out: folder and CIFAR-10 loading, bad-image handling, augmentation."""
from .datasets import BadImage
from .loaders import DataInfo, build_loaders

__all__ = ["BadImage", "DataInfo", "build_loaders"]
