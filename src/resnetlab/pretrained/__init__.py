"""Pretrained weights by name: the catalog of torchvision's and timm's ResNet-family files, and their store."""
from .catalog import (PretrainedWeights, WeightsFile, class_names, default_weights, find_weights, get_weights,
                      list_pretrained, pretrained_info, weights_for)
from .store import fetch, import_file, weights_dir

__all__ = ["PretrainedWeights", "WeightsFile", "class_names", "default_weights", "fetch", "find_weights",
           "get_weights", "import_file", "list_pretrained", "pretrained_info", "weights_dir", "weights_for"]
