"""Inference-ready models: batch norm folded into the convolutions, then the fastest backend there is.

``optimize(model)`` returns a ``DeployedModel``: it takes normalised NCHW float images and gives fp32 logits,
whatever runs underneath: PyTorch eager, Inductor (``torch.compile`` with frozen weights), ONNX
Runtime or OpenVINO; channels_last on GPUs.
"""
from __future__ import annotations

import copy
import importlib.util
import shutil

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from ..errors import ConfigError
from ..models.blocks import DeformableConv3x3
from ..models.norms import fold_weight_standardization
from .export import exported_program, onnx_bytes
from .model import DeployedModel, described_by
from .runtimes import onnxruntime_runner, openvino_runner

INFERENCE_BACKENDS = ("auto", "eager", "compile", "onnxruntime", "openvino")
INFERENCE_PRECISIONS = ("fp32", "bf16")
# Measured by benchmarks/bench_cpu_inference.py (BENCHMARKS.md; resnet50, batch 1, fp32, 2 cores):
# OpenVINO 1.48x torchvision eager, ONNX Runtime 1.47x, Inductor with freezing 1.40x. "auto" takes
# the first one installed.
CPU_PREFERENCE = ("openvino", "onnxruntime", "compile", "eager")
INSTALL_HINT = {"onnxruntime": "pip install onnxruntime onnx", "openvino": "pip install openvino"}


class _Tracer(torch.fx.Tracer):
    # A deformable convolution computes its offsets with Python control flow that fx cannot
    # trace; kept whole, its BN stays unfolded and everything around it still folds.
    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return isinstance(module, DeformableConv3x3) or super().is_leaf_module(module, name)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An inference copy with every BN that follows a convolution folded into that convolution, and
    weight-standardised convolutions (BiT) holding their standardised filters.

    The BNs of pre-activation blocks come before their convolution and stay: they are left alone, as
    are GroupNorm, EvoNorm and FRN, which depend on the image.
    """
    model = copy.deepcopy(model).eval()
    fold_weight_standardization(model)
    traced = torch.fx.GraphModule(model, _Tracer().trace(model))
    return fuse(traced, inplace=True, no_trace=True)


def backend_available(backend: str, device: torch.device) -> bool:
    if backend == "eager":
        return True
    if backend == "compile":  # Inductor compiles C++ on CPU
        return device.type == "cuda" or shutil.which("c++") is not None or shutil.which("g++") is not None
    if device.type != "cpu":
        return False  # our ONNX Runtime and OpenVINO paths are CPU paths
    return importlib.util.find_spec(backend) is not None and \
        (backend != "onnxruntime" or importlib.util.find_spec("onnx") is not None)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in INFERENCE_BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(INFERENCE_BACKENDS)}")
    if backend == "auto":
        return "compile" if device.type == "cuda" else next(b for b in CPU_PREFERENCE if backend_available(b, device))
    if not backend_available(backend, device):
        if backend in INSTALL_HINT and device.type == "cpu":
            raise ConfigError(f"backend {backend!r} is not installed; {INSTALL_HINT[backend]}")
        raise ConfigError(f"backend {backend!r} cannot run on {device.type} here")
    return backend


def optimize(model: nn.Module, backend: str = "auto", precision: str = "fp32",
             input_size: tuple[int, int] | None = None, device: str | torch.device | None = None) -> DeployedModel:
    """``model`` ready for inference on ``device`` (default: where its weights are).

    ``input_size`` (height, width) is the size the exporting backends trace at; batch stays dynamic.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(INFERENCE_PRECISIONS)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    backend = resolve_backend(backend, device)
    if backend == "onnxruntime" and precision == "bf16":
        raise ConfigError("onnxruntime runs fp32 models on CPU here; use --precision fp32 or another backend")
    if input_size is None:
        side = getattr(getattr(model, "preprocessing", None), "input_size", 224)
        input_size = (side, side)
    folded = fold_batch_norm(model).to(device)
    in_chans = getattr(getattr(model, "config", None), "in_chans", 3)
    example = torch.randn(1, in_chans, *input_size, device=device)
    build = {"eager": _eager, "compile": _compiled, "onnxruntime": _onnxruntime, "openvino": _openvino}[backend]
    return DeployedModel(run=build(folded, precision, example), backend=backend, precision=precision, device=device,
                         **described_by(model))


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _memory_format(device: torch.device) -> torch.memory_format:
    # NHWC feeds tensor cores on GPUs; on CPU, eager oneDNN convolutions measured slower in it.
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _eager(model: nn.Module, precision: str, example: torch.Tensor):
    memory_format = _memory_format(example.device)
    model = model.to(memory_format=memory_format)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _autocast(images.device, precision):
            return model(images.contiguous(memory_format=memory_format)).float()

    return run


def _compiled(model: nn.Module, precision: str, example: torch.Tensor):
    import torch._inductor.config as inductor_config

    memory_format = _memory_format(example.device)
    model = model.to(memory_format=memory_format)
    # Freezing turns the weights into constants, which Inductor pre-packs for oneDNN on CPU; the
    # C++ wrapper launches the kernels from C++, which matters at batch 1. Both are read while a
    # graph compiles, and a new batch size compiles again: so each call runs under them (passing
    # them as torch.compile options left freezing off: 0.76x torchvision instead of 1.38x).
    settings = {"freezing": True, "cpp_wrapper": True}
    if example.device.type == "cuda":
        settings["triton.cudagraphs"] = True  # one graph launch a batch instead of ~100 kernels
    compiled = torch.compile(model)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), inductor_config.patch(settings), _autocast(images.device, precision):
            return compiled(images.contiguous(memory_format=memory_format)).float()

    return run


def _onnxruntime(model: nn.Module, precision: str, example: torch.Tensor):
    return onnxruntime_runner(onnx_bytes(model, example))


def _openvino(model: nn.Module, precision: str, example: torch.Tensor):
    import openvino

    converted = openvino.convert_model(exported_program(model, example))
    converted.reshape([-1, *example.shape[1:]])  # the batch stays free; the image size is the one exported
    return openvino_runner(converted, precision)
