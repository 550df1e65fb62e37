from .registry import MODELS, create_model, list_models, model_config
from .resnet import ResNet, ResNetConfig
from .weights import LoadReport, load_model, load_weights, save_weights

__all__ = ["MODELS", "LoadReport", "ResNet", "ResNetConfig", "create_model", "list_models",
           "load_model", "load_weights", "model_config", "save_weights"]
