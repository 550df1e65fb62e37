"""Grad-CAM (Selvaraju et al., ICCV 2017): where in the image a class's evidence lies."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from .errors import ConfigError
from .models.resnet import ResNet

# Small inputs (32x32 CIFAR crops) are enlarged for viewing, with square pixels.
MIN_DISPLAY_SIDE = 256


@dataclass(frozen=True)
class ExplainSettings:
    """What ``resnetlab explain`` does: the Grad-CAM of ``class_name`` (None: the predicted class) for ``image``,
    over it, written to the PNG ``out``."""

    checkpoint: str  # a classifier's trained weights (.safetensors) or a pretrained tag
    image: Path
    out: Path
    class_name: str | None = None

    def __post_init__(self) -> None:
        if Path(self.out).suffix.lower() != ".png":
            raise ConfigError(f"--out must end in .png, not {Path(self.out).name}")


def grad_cam(model: ResNet, image: torch.Tensor, target_class: int | None = None) -> torch.Tensor:
    """Heatmap (H, W) in [0, 1] at the image's size: the evidence for ``target_class``.

    ``image`` is one normalised 3xHxW input. The last stage's activations are weighted by
    the spatial mean of the class score's gradient with respect to them, summed over
    channels and kept where positive. ``target_class`` defaults to the predicted class.
    The model runs in eval mode and is put back in its mode afterwards.
    """
    if model.config.num_classes == 0:
        raise ConfigError("Grad-CAM needs a classifier; this model has no head (num_classes=0)")
    if target_class is not None and not 0 <= target_class < model.config.num_classes:
        raise ConfigError(f"target_class must be 0 to {model.config.num_classes - 1}, got {target_class}")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            activations = model.forward_features(image.unsqueeze(0))  # 1xCxhxw, the last stage
            scores = model.forward_head(activations)[0]
            target = int(scores.argmax()) if target_class is None else target_class
            (gradients,) = torch.autograd.grad(scores[target], activations)
    finally:
        model.train(was_training)
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((channel_weights * activations).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def overlay_heatmap(crop: torch.Tensor, heatmap: torch.Tensor, opacity: float = 0.5,
                    colormap: str = "jet") -> Image.Image:
    """The uint8 3xHxW ``crop`` with ``heatmap`` (HxW in [0, 1]) blended over it in colour."""
    colors = colormaps[colormap](heatmap.clamp(0, 1).numpy())[..., :3]  # HxWx3 floats in [0, 1]
    pixels = crop.permute(1, 2, 0).numpy() / 255.0
    blended = Image.fromarray(np.uint8(np.round(255 * ((1 - opacity) * pixels + opacity * colors))))
    scale = math.ceil(MIN_DISPLAY_SIDE / min(blended.size))
    if scale > 1:
        blended = blended.resize((blended.width * scale, blended.height * scale), Image.Resampling.NEAREST)
    return blended
