"""The one model you can call: ``model(images) -> logits`` on normalised NCHW float images, whatever runs
underneath, with what a deployment needs to know around it. ``optimize`` makes one of a model in memory,
``load_deployed`` of a model file; eval, predict, bench, serve and the compress chain take it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..preprocessing import Preprocessing


@dataclass
class DeployedModel:
    run: Callable[[torch.Tensor], torch.Tensor]
    backend: str  # what runs it: "eager", "compile", "onnxruntime", "openvino", "aotinductor", "torchscript", or
    # "x86" (PyTorch's INT8 kernels); bench's reference rows name their library ("torchvision-eager")
    precision: str  # "fp32", "bf16", or "int8" for a quantized graph
    device: torch.device
    # What resnetlab's own models and files tell of themselves; None (and 3 channels, no classes) for a module
    # that is not one of ours, such as bench's torchvision and timm models.
    arch: str | None = None
    in_chans: int = 3
    num_classes: int = 0
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    params: int | None = None  # None for a graph file: its parameters are not the PyTorch model's
    path: Path | None = None  # the file it was loaded from; None for a model in memory
    format: str | None = None  # that file's format: "safetensors", "onnx", "pt2" or "torchscript"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)

    def eval(self) -> DeployedModel:  # the training loop's ``evaluate`` calls it; nothing here trains
        return self


def described_by(model: nn.Module) -> dict:
    """The ``DeployedModel`` fields a resnetlab model (ResNet, HRNet) gives of itself; none for another module."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "arch"):
        return {}
    return {"arch": model.arch, "in_chans": config.in_chans, "num_classes": config.num_classes,
            "class_names": model.class_names, "preprocessing": model.preprocessing,
            "params": sum(p.numel() for p in model.parameters())}
