"""resnetlab: the ResNet family on PyTorch, exact and interchangeable with torchvision and timm."""
from importlib.metadata import version

from .complexity import count_macs, count_parameters, stage_table
from .errors import CheckpointError, ConfigError, ResnetlabError
from .models import (HRNet, HRNetConfig, LoadReport, ResNet, ResNetConfig, create_model, list_models, load_model,
                     load_weights, save_weights)
from .preprocessing import Preprocessing
from .pretrained import list_pretrained, pretrained_info

__version__ = version("resnetlab")

# The training engine and the inference backends pull in the data stack, TensorBoard and the
# exporters: they load on first use, so `import resnetlab` stays quick for model building.
_LAZY = {"train": "engine.trainer", "TrainConfig": "config", "optimize": "deploy.optimize",
         "export_model": "deploy.export", "load_deployed": "deploy.files"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)

__all__ = [
    "CheckpointError", "ConfigError", "HRNet", "HRNetConfig", "LoadReport", "Preprocessing", "ResNet", "ResNetConfig",
    "ResnetlabError", "count_macs", "count_parameters", "create_model", "list_models", "list_pretrained",
    "load_model", "load_weights", "pretrained_info", "save_weights", "stage_table", *_LAZY,
]
