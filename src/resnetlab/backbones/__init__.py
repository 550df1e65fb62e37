"""Backbones: multi-scale feature maps of ResNets and HRNets, a feature pyramid, DeepLabV3 for segmentation."""
from ..models.features import FeatureInfo, HRNetFeatures, ResNetFeatures
from .pyramid import ResNetFPN, fpn
from .segmentation import deeplabv3

__all__ = ["FeatureInfo", "HRNetFeatures", "ResNetFPN", "ResNetFeatures", "deeplabv3", "fpn"]
