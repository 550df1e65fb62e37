"""Any model file resnetlab writes, ready to run as a ``DeployedModel``: trained weights (.safetensors), an
exported or INT8-quantized ONNX graph (.onnx), an AOTInductor package (.pt2: ``export --format pt2``), or a
TorchScript file (.pt: the x86 INT8 files and exports of earlier versions). ``eval``, ``predict``, ``bench``
and ``serve`` take each through ``load_deployed``, and ``export`` checks what it wrote with it; an .onnx runs on the
runtime its metadata names (ONNX Runtime unless it says OpenVINO)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError
from ..models.checkpoint import refuse_folder
from ..pretrained.catalog import is_pretrained_tag
from ..preprocessing import Preprocessing
from .model import DeployedModel, described_by
from .runtimes import load_aoti_package, load_torchscript, onnxruntime_runner, openvino_runner, read_onnx_metadata

logger = logging.getLogger("resnetlab")
MODEL_FILE_FORMATS = {".safetensors": "safetensors", ".onnx": "onnx", ".pt2": "pt2", ".pt": "torchscript"}  # suffix -> format
FORMAT_SUFFIXES = {format: suffix for suffix, format in MODEL_FILE_FORMATS.items()}


def load_deployed(path: str | os.PathLike, device: torch.device | str = "cpu",
                  format: str | None = None) -> DeployedModel:
    """``device`` "auto": a GPU when there is one for weights, the CPU for graph files (they run there).

    ``format`` ("safetensors", "onnx", "pt2", "torchscript") is read from the suffix when not given; an export
    gives it to check the file it is writing under a temporary name."""
    path = Path(path)
    if format is not None and format not in MODEL_FILE_FORMATS.values():
        raise ConfigError(f"unknown model format {format!r}; choose one of {', '.join(MODEL_FILE_FORMATS.values())}")
    format = format or model_file_format(path)
    if format == "safetensors":
        return _safetensors(path, resolve_device(device) if isinstance(device, str) else device)
    device = torch.device("cpu") if device == "auto" else torch.device(device)
    if device.type != "cpu":
        raise ConfigError(f"{path.suffix} models run on the CPU here, not {device}")
    return {"onnx": _onnx, "pt2": _pt2, "torchscript": _torchscript}[format](path, device)


def model_file_format(path: Path) -> str:
    """"safetensors", "onnx", "pt2" or "torchscript" for an existing model file, "safetensors" for a pretrained tag
    (``resnet50.a1_in1k``, fetched on first use); a ``CheckpointError`` for anything else."""
    if is_pretrained_tag(path):
        return "safetensors"
    refuse_folder(path, "model file", MODEL_FILE_FORMATS)
    if path.suffix not in MODEL_FILE_FORMATS:
        raise CheckpointError(f"{path.name} is neither a .safetensors (resnetlab train), an .onnx (resnetlab export "
                              "or quantize), a .pt2 (resnetlab export --format pt2, or quantize --backend x86), a "
                              "TorchScript .pt (earlier versions) model file, nor a pretrained tag (`resnetlab weights list`)")
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    return MODEL_FILE_FORMATS[path.suffix]


def _safetensors(path: Path, device: torch.device) -> DeployedModel:
    from ..models import load_model

    model = load_model(path).eval().to(device)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images.to(device))

    return DeployedModel(run=run, backend="eager", precision="fp32", device=device, path=path,
                         format="safetensors", **described_by(model))


def _onnx(path: Path, device: torch.device) -> DeployedModel:
    metadata = read_onnx_metadata(path)
    backend = metadata.get("runtime", "onnxruntime")
    run = openvino_runner(path) if backend == "openvino" else onnxruntime_runner(path)
    return _graph(path, "onnx", backend, metadata, device, run)


def _pt2(path: Path, device: torch.device) -> DeployedModel:
    run, metadata = load_aoti_package(path)
    # "x86" for an INT8 package of quantize --backend x86: PyTorch's INT8 kernels, compiled in
    return _graph(path, "pt2", metadata.get("runtime", "aotinductor"), metadata, device, run)


def _torchscript(path: Path, device: torch.device) -> DeployedModel:
    module, metadata = load_torchscript(path)
    again = "quantize it again (--backend x86 now writes a .pt2)" if metadata.get("precision") == "int8" \
        else "export the model again as --format pt2 (or onnx)"
    # An earlier version's file: nothing writes these now
    logger.warning("%s is a TorchScript file, which PyTorch deprecates: it loads, but %s to keep it running on "
                   "later versions", path.name, again)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images.cpu())

    return _graph(path, "torchscript", metadata.get("runtime", "torchscript"), metadata, device, run)


def _graph(path: Path, format: str, backend: str, metadata: dict, device: torch.device, run) -> DeployedModel:
    return DeployedModel(run=run, backend=backend, precision=metadata.get("precision", "fp32"), device=device,
                         arch=metadata["arch"], in_chans=metadata["config"]["in_chans"],
                         num_classes=metadata["config"]["num_classes"], class_names=metadata["class_names"],
                         preprocessing=Preprocessing(**metadata["preprocessing"]), path=path, format=format)
