"""ResNets as backbones: multi-scale feature maps and a feature pyramid for detection."""
from .features import FeatureInfo, ResNetFeatures
from .pyramid import ResNetFPN, fpn

__all__ = ["FeatureInfo", "ResNetFPN", "ResNetFeatures", "fpn"]
