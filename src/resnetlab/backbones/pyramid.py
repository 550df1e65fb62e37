"""ResNet (or HRNet) + feature pyramid network: the backbone torchvision's detection models expect."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from ..errors import ConfigError
from ..models.checkpoint import WeightsSource
from ..models.registry import build_model, model_config
from ..models.weights import load_weights
from ..models.features import HRNetFeatures, ResNetFeatures, backbone_of, check_backbone_options

# torchvision's default for a pretrained detection backbone: layer2..layer4 train, the stem and
# layer1 (generic edges and textures) stay as pretrained.
PRETRAINED_TRAINABLE_STAGES = 3


class ResNetFPN(nn.Module):
    """``body`` (a ``ResNetFeatures`` or ``HRNetFeatures``) followed by an FPN; returns ``{"0": P2, ..., "pool": P6}``.

    The keys and the ``out_channels`` attribute are what torchvision's ``FasterRCNN``,
    ``MaskRCNN`` and ``RetinaNet`` read, so this plugs straight into them.
    """

    def __init__(self, body: ResNetFeatures | HRNetFeatures, out_channels: int = 256,
                 extra_blocks: ExtraFPNBlock | None = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels,
                                         extra_blocks=extra_blocks or LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(features)))


def fpn(name: str, out_channels: int = 256, trainable_stages: int | None = None, *,
        weights: WeightsSource | None = None, out_indices: tuple[int, ...] | None = None,
        norm_eval: bool = False, extra_blocks: ExtraFPNBlock | None = None, **options) -> ResNetFPN:
    """A registered ResNet or HRNet with a feature pyramid on its stages, ready for torchvision detection.

    ``trainable_stages`` counts from the top as torchvision's ``trainable_layers``: 3 trains
    layer2..layer4, N + 1 trains everything including the stem. None means 3 when ``weights``
    are given and everything otherwise (freezing random weights helps nobody). ``weights`` is
    anything ``load_weights`` reads (a classifier's ``.safetensors``, a torchvision ``.pth`` or
    URL); its head is dropped. With pretrained weights and a few images per GPU, pass
    ``norm_eval=True`` (mmdet's choice; torchvision freezes BN for the same reason).
    ``out_indices`` defaults to every stage; ``options`` are ``create_model``'s (``ResNetConfig`` fields).
    ``extra_blocks`` defaults to a max-pooled P6 (torchvision's Faster/Mask R-CNN); torchvision's
    RetinaNet uses ``out_indices=(2, 3, 4)`` with ``extra_blocks=LastLevelP6P7(256, 256)``.

    Example, Faster R-CNN on ResNet-50-FPN for 3 classes (background counts as one)::

        from torchvision.models.detection import FasterRCNN
        from resnetlab.backbones import fpn

        backbone = fpn("resnet50", trainable_stages=3, weights="resnet50.safetensors", norm_eval=True)
        detector = FasterRCNN(backbone, num_classes=3)
        losses = detector(images, targets)  # train mode: a dict of losses
        detector.eval()
        detections = detector(images)  # [{"boxes": (N, 4), "labels": (N,), "scores": (N,)}]
    """
    if "features_only" in options or "frozen_stages" in options:
        raise ConfigError("fpn builds its own backbone: give trainable_stages instead of "
                          "frozen_stages, and no features_only")
    config = model_config(name, num_classes=0, **options)
    num_stages = len(config.layers)
    if trainable_stages is None:
        trainable_stages = PRETRAINED_TRAINABLE_STAGES if weights is not None else num_stages + 1
    if not isinstance(trainable_stages, int) or not 0 <= trainable_stages <= num_stages + 1:
        raise ConfigError(f"trainable_stages must be 0 to {num_stages + 1} for {name} "
                          f"({num_stages + 1} trains the stem too), got {trainable_stages!r}")
    # trainable_stages = N + 1 leaves nothing frozen; N freezes the stem; N - 1 the stem and layer1.
    frozen_stages = None if trainable_stages == num_stages + 1 else num_stages - trainable_stages
    check_backbone_options(name, num_stages, out_indices, frozen_stages)  # before the build

    model = build_model(config, arch=name)
    if weights is not None:
        load_weights(model, weights)
    body = backbone_of(model, out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval)
    return ResNetFPN(body, out_channels, extra_blocks)
