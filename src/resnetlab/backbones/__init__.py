"""ResNets as backbones: multi-scale feature maps, a feature pyramid for detection, DeepLabV3 for segmentation."""
from .features import FeatureInfo, ResNetFeatures
from .pyramid import ResNetFPN, fpn
from .segmentation import deeplabv3

__all__ = ["FeatureInfo", "ResNetFPN", "ResNetFeatures", "deeplabv3", "fpn"]
