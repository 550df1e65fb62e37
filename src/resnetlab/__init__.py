"""resnetlab: the ResNet family on PyTorch, exact and interchangeable with torchvision and timm."""
from importlib.metadata import version

from .complexity import count_macs, count_parameters, stage_table
from .errors import CheckpointError, ConfigError, ResnetlabError
from .models import (LoadReport, ResNet, ResNetConfig, create_model, list_models, load_model,
                     load_weights, save_weights)
from .preprocessing import Preprocessing

__version__ = version("resnetlab")

__all__ = [
    "CheckpointError", "ConfigError", "LoadReport", "Preprocessing", "ResNet", "ResNetConfig",
    "ResnetlabError", "count_macs", "count_parameters", "create_model", "list_models",
    "load_model", "load_weights", "save_weights", "stage_table",
]
