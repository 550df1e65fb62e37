"""Export a trained model to ONNX, an AOTInductor package (.pt2) or safetensors, and check the file
against eager at once.

Both graph formats go through ``torch.export``: ONNX through PyTorch's torch.export-based exporter
(onnxscript), the .pt2 through AOTInductor (``torch._inductor.aoti_compile_and_package``), compiled
ahead of time into a package that runs with torch alone, without resnetlab's model code. Every
format carries what a deployment needs besides the graph: architecture, class names and
preprocessing (input size, resize, mean, std), as ``model_metadata`` gives them. TorchScript, which
PyTorch deprecates, is no longer written; the .pt files of earlier versions still load.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_path
from .files import FORMAT_SUFFIXES, load_deployed
from ..errors import ConfigError
from ..models import ResNet, save_weights
from ..models.weights import METADATA_KEY, model_metadata, read_metadata
from .runtimes import load_aoti_package, load_torchscript, quiet_cuda_probe, read_onnx_metadata

EXPORT_FORMATS = ("onnx", "pt2", "safetensors")  # what export writes; files.py has their suffixes
# A dynamic batch must really be dynamic: two sizes the export never saw (a static one is fed in chunks).
CHECK_BATCHES = (1, 7)
TOLERANCE = 1e-3  # max abs logit difference, relative to logits of order one
DEFAULT_OPSET = 19  # the first with DeformConv
MIN_OPSET = 18  # the exporter's own opset; below it, it converts versions and fails on the ResNets' graphs
MAX_OPSET = 23  # the newest ONNX Runtime 1.32 and OpenVINO run
DEFORM_CONV_OPSET = 19
# torch.export specialises a dimension whose example size is 1, so the dynamic batch is traced at 2.
EXPORT_BATCH = 2
MAX_BATCH = 4096


@dataclass
class ExportReport:
    path: Path
    format: str
    bytes: int
    max_abs_difference: float  # exported vs eager, over the checked batches
    checked_batches: tuple[int, ...]


def check_opset(opset: int, model: torch.nn.Module | None = None) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX opset {opset} is not supported; choose one from {MIN_OPSET} to {MAX_OPSET} "
                          f"(default {DEFAULT_OPSET})")
    if opset < DEFORM_CONV_OPSET and getattr(getattr(model, "config", None), "deformable", False):
        raise ConfigError(f"ONNX has DeformConv from opset {DEFORM_CONV_OPSET}: export this deformable model with "
                          f"--opset {DEFORM_CONV_OPSET} or later, or as --format pt2")


def exported_program(model: torch.nn.Module, example: torch.Tensor,
                     dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``model`` captured by ``torch.export`` at ``example``'s image size, its batch dimension free unless
    ``dynamic_batch`` is False (then it is ``example``'s)."""
    example, shapes = export_inputs(example, dynamic_batch)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=shapes)


def export_inputs(example: torch.Tensor, dynamic_batch: bool) -> tuple[torch.Tensor, tuple | None]:
    """What ``torch.export`` is given for ``example``: the image and, for a free batch, the batch dimension."""
    if not dynamic_batch:
        return example, None
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return example[:1].expand(EXPORT_BATCH, *example.shape[1:]).contiguous(), ({0: batch},)


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = True,
               opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> bytes:
    """``model`` as an ONNX graph with input ``images`` and output ``logits``, its batch dynamic unless
    ``dynamic_batch`` is False; a ``ConfigError`` when the exporter fixed a batch it was asked to free."""
    example, shapes = export_inputs(example, dynamic_batch)
    with torch.no_grad():
        program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False)
    graph = program.model_proto
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    if dynamic_batch and not batch.dim_param:  # pytorch/pytorch#157621: checked, not assumed
        raise ConfigError(f"the ONNX exporter fixed the batch size to {batch.dim_value}; export with "
                          "--static-batch, or as --format pt2")
    if metadata is not None:
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return graph.SerializeToString()


def save_aoti_package(program: torch.export.ExportedProgram, path: Path, metadata: dict) -> None:
    """``program`` compiled by AOTInductor for this CPU into the package ``path``, with ``metadata`` inside, its
    batch as the program has it (``exported_program``'s: free). Weights are frozen into the package, so Inductor
    pre-packs them for oneDNN."""
    import torch._inductor.config as inductor_config

    quiet_cuda_probe()
    with tempfile.TemporaryDirectory() as work, torch.no_grad(), inductor_config.patch(freezing=True), \
            warnings.catch_warnings():
        # Inductor's INT8 lowering copies a tensor the way it warns others not to: torch's to change
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=str(Path(work) / "model.pt2"),
            inductor_configs={"aot_inductor.metadata": {METADATA_KEY: json.dumps(metadata)}})
        shutil.copyfile(package, path)


@dataclass(frozen=True)
class ExportSettings:
    """How ``resnetlab export`` writes a model. ``opset`` None: ``DEFAULT_OPSET``; it and ``static_batch`` are
    ONNX's alone, and given for another format they are an error, not silently ignored."""

    format: str = "onnx"  # one of EXPORT_FORMATS
    opset: int | None = None
    static_batch: bool = False  # ONNX: the batch fixed at 1, fed in chunks of it; else a dynamic batch dimension

    def __post_init__(self) -> None:
        if self.format == "torchscript":
            raise ConfigError("TorchScript is deprecated in PyTorch and no longer written: export --format pt2 "
                              "(an AOTInductor package) or onnx; .pt files from earlier versions still load")
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        if self.format != "onnx" and (self.opset is not None or self.static_batch):
            raise ConfigError("--opset applies to ONNX exports only" if self.opset is not None
                              else "--static-batch applies to ONNX exports only")
        check_opset(self.onnx_opset)

    @property
    def onnx_opset(self) -> int:
        return DEFAULT_OPSET if self.opset is None else self.opset


def export_model(model: ResNet, path: str | Path, settings: ExportSettings = ExportSettings()) -> ExportReport:
    """Write ``model`` to ``path`` atomically, then load it back and compare it with eager."""
    path, format = Path(path), settings.format
    if path.suffix != FORMAT_SUFFIXES[format]:
        raise ConfigError(f"a {format} export is a {FORMAT_SUFFIXES[format]} file; {path.name} is not")
    if format == "onnx":
        check_opset(settings.onnx_opset, model)
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
                tmp.write_bytes(onnx_bytes(model, example, not settings.static_batch, settings.onnx_opset, metadata))
            else:
                save_aoti_package(exported_program(model, example), tmp, metadata)
            difference = _check(model, tmp, format, side)
    return ExportReport(path=path, format=format, bytes=path.stat().st_size, max_abs_difference=difference,
                        checked_batches=CHECK_BATCHES)


def read_export_metadata(path: str | Path) -> dict:
    """The metadata a model file carries, by its suffix: .onnx, .pt2, .safetensors, else TorchScript."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_metadata(path)
    if path.suffix == ".onnx":
        return read_onnx_metadata(path)
    return load_aoti_package(path)[1] if path.suffix == ".pt2" else load_torchscript(path)[1]


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
