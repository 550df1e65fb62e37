"""Any model file resnetlab writes, ready to run: trained weights (.safetensors) or an exported or
INT8-quantized graph (.onnx). ``eval``, ``predict`` and ``bench`` take either through ``load_deployed``."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError
from .preprocessing import Preprocessing


@dataclass
class DeployedModel:
    """``model(images) -> logits`` on normalised NCHW float images, with what it needs around it."""

    path: Path
    format: str  # "safetensors" or "onnx"
    arch: str
    precision: str  # "fp32", or "int8" for a quantized graph
    params: int | None  # None for an ONNX graph: its parameters are not PyTorch's
    in_chans: int
    class_names: list[str] | None
    num_classes: int
    preprocessing: Preprocessing
    device: torch.device
    run: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.format == "onnx" else "eager"

    def eval(self) -> DeployedModel:  # the training loop's ``evaluate`` calls it; nothing here trains
        return self


def load_deployed(path: str | os.PathLike, device: torch.device | str = "cpu") -> DeployedModel:
    """``device`` "auto": a GPU when there is one for weights, the CPU for ONNX graphs (they run there)."""
    from .engine.distributed import resolve_device

    path = Path(path)
    if model_file_format(path) == "onnx":
        return _onnx(path, torch.device("cpu") if device == "auto" else torch.device(device))
    return _safetensors(path, resolve_device(device) if isinstance(device, str) else device)


def model_file_format(path: Path) -> str:
    """"safetensors" or "onnx" for an existing model file; a ``CheckpointError`` for anything else."""
    if path.suffix not in (".safetensors", ".onnx"):
        raise CheckpointError(f"{path.name} is neither a .safetensors (resnetlab train) nor an .onnx "
                              "(resnetlab export or quantize) model file")
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    return path.suffix[1:]


def _safetensors(path: Path, device: torch.device) -> DeployedModel:
    from .models import load_model

    model = load_model(path).eval().to(device)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images.to(device))

    return DeployedModel(path=path, format="safetensors", arch=model.arch, precision="fp32",
                         params=sum(p.numel() for p in model.parameters()), in_chans=model.config.in_chans,
                         class_names=model.class_names, num_classes=model.config.num_classes,
                         preprocessing=model.preprocessing, device=device, run=run)


def _onnx(path: Path, device: torch.device) -> DeployedModel:
    if device.type != "cpu":
        raise ConfigError(f"ONNX models run on the CPU here (ONNX Runtime's CPU provider), not {device}")
    from .export import onnxruntime_runner, read_export_metadata

    metadata = read_export_metadata(path)
    run = onnxruntime_runner(path)
    return DeployedModel(path=path, format="onnx", arch=metadata["arch"], precision=metadata.get("precision", "fp32"),
                         params=None, in_chans=metadata["config"]["in_chans"],
                         class_names=metadata["class_names"], num_classes=metadata["config"]["num_classes"],
                         preprocessing=Preprocessing(**metadata["preprocessing"]), device=device, run=run)
