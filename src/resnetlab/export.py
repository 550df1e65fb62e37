"""Export a trained model to ONNX, TorchScript or safetensors, and check the file against eager at once.

Every format carries what a deployment needs besides the graph: architecture, class names and
preprocessing (input size, resize, mean, std), as ``model_metadata`` gives them.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

from .atomic import atomic_path
from .deployed import load_deployed
from .errors import ConfigError
from .models import ResNet, save_weights
from .models.weights import METADATA_KEY, model_metadata, read_metadata
from .runtimes import load_torchscript, quiet_tracing, read_onnx_metadata

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
# A dynamic batch must really be dynamic: two sizes the trace never saw (a static one is fed in chunks).
CHECK_BATCHES = (1, 7)
TOLERANCE = 1e-3  # max abs logit difference, relative to logits of order one
DEFAULT_OPSET = 17
MIN_OPSET = 10  # the CIFAR ResNets' zero-padding shortcut slices with a stride, which ONNX has from opset 10
MAX_OPSET = ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET  # the newest the exporter we call (dynamo=False) supports


@dataclass
class ExportReport:
    path: Path
    format: str
    bytes: int
    max_abs_difference: float  # exported vs eager, over the checked batches
    checked_batches: tuple[int, ...]


def refuse_deformable_onnx(model: torch.nn.Module) -> None:
    if getattr(getattr(model, "config", None), "deformable", False):
        raise ConfigError("ONNX export has no converter for torchvision's deform_conv2d: export a deformable "
                          "model as torchscript or safetensors, or run it with the eager, compile or openvino backend")


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX opset {opset} is not supported; choose one from {MIN_OPSET} to {MAX_OPSET} "
                          f"(default {DEFAULT_OPSET})")


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = True,
               opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> bytes:
    """``model`` as an ONNX graph with input ``images`` and output ``logits``."""
    buffer = io.BytesIO()
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with quiet_tracing():
        torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    if metadata is None:
        return buffer.getvalue()
    import onnx

    graph = onnx.load_from_string(buffer.getvalue())
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return graph.SerializeToString()


def export_model(model: ResNet, path: str | Path, format: str = "onnx", *, dynamic_batch: bool = True,
                 opset: int = DEFAULT_OPSET) -> ExportReport:
    """Write ``model`` to ``path`` atomically, then load it back and compare it with eager."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if path.suffix != FORMATS[format]:
        raise ConfigError(f"a {format} export is a {FORMATS[format]} file; {path.name} is not")
    if format == "onnx":
        refuse_deformable_onnx(model)
        check_opset(opset)
    model = model.eval()
    side = model.preprocessing.input_size
    example = torch.randn(1, model.config.in_chans, side, side)
    metadata = model_metadata(model)
    if format == "safetensors":
        save_weights(model, path)
        difference = _check(model, path, format, side)
    else:
        with atomic_path(path) as tmp:  # checked before it is renamed into place: a bad export leaves nothing
            if format == "onnx":
                tmp.write_bytes(onnx_bytes(model, example, dynamic_batch, opset, metadata))
            else:
                save_torchscript(model, example, tmp, metadata)
            difference = _check(model, tmp, format, side)
    return ExportReport(path=path, format=format, bytes=path.stat().st_size, max_abs_difference=difference,
                        checked_batches=CHECK_BATCHES)


def save_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> None:
    """``module`` traced at ``example`` (its batch stays free) and saved with ``metadata`` beside the graph."""
    with quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def read_export_metadata(path: str | Path) -> dict:
    """The metadata an export carries, by the file's suffix: .onnx, .safetensors, else TorchScript."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_metadata(path)
    return read_onnx_metadata(path) if path.suffix == ".onnx" else load_torchscript(path)[1]


def _check(model: ResNet, path: Path, format: str, side: int) -> float:
    """Load the written file the way ``eval``, ``predict`` and ``serve`` will, metadata included, and
    compare its logits with eager's; the worst absolute difference."""
    run = load_deployed(path, format=format)
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for batch in CHECK_BATCHES:
        images = torch.randn(batch, model.config.in_chans, side, side, generator=generator)
        with torch.no_grad():
            expected = model(images)
        got = run(images)
        if got.shape != expected.shape:
            raise ConfigError(f"the exported {format} model gave logits of shape {tuple(got.shape)} for a batch "
                              f"of {batch}, not {tuple(expected.shape)}")
        scale = max(1.0, expected.abs().max().item())
        difference = (got - expected).abs().max().item()
        if not difference <= TOLERANCE * scale:
            raise ConfigError(f"the exported {format} model differs from the eager one by {difference:.3g} "
                              f"on a batch of {batch}; {path} is not to be trusted")
        worst = max(worst, difference)
    return worst
