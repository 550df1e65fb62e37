"""A ResNet under torchvision's DeepLabV3 head: semantic segmentation on a dilated backbone."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from ..errors import ConfigError
from ..models.checkpoint import WeightsSource
from ..models.registry import model_config
from ..models.resnet import ResNet, ResNetConfig
from ..models.weights import load_weights
from ..models.features import ResNetFeatures


class LastFeatureMap(nn.Module):
    """``body``'s deepest map as ``{"out": map}``, the form torchvision's segmentation models read."""

    def __init__(self, body: ResNetFeatures):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)[-1]}


def deeplabv3(name: str, num_classes: int, output_stride: int = 8, weights: WeightsSource | None = None, *,
              norm_eval: bool = False, **options) -> DeepLabV3:
    """torchvision's DeepLabV3 (Chen et al. 2017: atrous spatial pyramid pooling) on a registered ResNet
    whose last strides are dilations (``output_stride`` 8 or 16: the last map is 1/8 or 1/16 of the input).

    ``weights`` is anything ``load_weights`` reads, typically an ImageNet classifier: dilation changes no
    weight, so the undilated checkpoint loads as it is; its head is dropped. ``norm_eval=True`` keeps the
    backbone's BN statistics during training (small segmentation batches). The model returns
    ``{"out": logits}`` at the input's size, as torchvision's segmentation models do.
    """
    if "features_only" in options or "out_indices" in options:
        raise ConfigError("deeplabv3 builds its own backbone on the last stage: no features_only or out_indices")
    config = model_config(name, **options)
    if not isinstance(config, ResNetConfig):
        raise ConfigError(f"deeplabv3 dilates a ResNet's last stages; {name} is not a ResNet")
    if num_classes < 1:
        raise ConfigError(f"deeplabv3 needs at least one class, not {num_classes}")
    config = model_config(name, num_classes=0, output_stride=output_stride, **options)
    model = ResNet(config, arch=name)
    if weights is not None:
        load_weights(model, weights)
    body = ResNetFeatures(model, out_indices=(len(model.stage_names),), norm_eval=norm_eval)
    return DeepLabV3(LastFeatureMap(body), DeepLabHead(body.feature_info.channels()[-1], num_classes))
