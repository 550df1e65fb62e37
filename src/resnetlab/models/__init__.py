from .hrnet import HRNET_MODELS, HRNet, HRNetConfig
from .registry import ALIASES, MODELS, alias_of, aliases_of, create_model, list_models, model_config
from .resnet import ResNet, ResNetConfig
from .weights import LoadReport, load_model, load_weights, save_weights

__all__ = ["ALIASES", "HRNET_MODELS", "HRNet", "HRNetConfig", "MODELS", "LoadReport", "ResNet", "ResNetConfig",
           "alias_of", "aliases_of", "create_model", "list_models", "load_model", "load_weights", "model_config",
           "save_weights"]
