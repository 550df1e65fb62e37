"""Export a trained model to ONNX, TorchScript or safetensors, and check the file against eager at once.

Every format carries what a deployment needs besides the graph: architecture, class names and
preprocessing (input size, resize, mean, std), as ``model_metadata`` gives them.
"""
from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

from .atomic import atomic_path
from .deployed import load_deployed
from .errors import CheckpointError, ConfigError
from .models import ResNet, save_weights
from .models.weights import model_metadata, read_metadata

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
METADATA_KEY = "resnetlab"  # ONNX metadata_props key, and TorchScript extra file "resnetlab.json"
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


@contextmanager
def quiet_tracing():
    """The exporters trace with TorchScript, which warns of its own deprecation (on every trace, save
    and load) and of strided slices it cannot constant-fold (the zero-padding shortcut's); neither is
    the user's to act on."""
    with warnings.catch_warnings():
        for message in ("Constant folding", "`torch.jit.", "The feature will be removed"):
            warnings.filterwarnings("ignore", message=message)
        yield


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


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict]:
    """A TorchScript file resnetlab wrote (export or quantize --backend x86), on the CPU, and its metadata."""
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        with quiet_tracing():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # a torch.save pickle (a training state like last.pt), or a corrupt file
        raise CheckpointError(f"{path} is not a TorchScript model; give a .pt from resnetlab export --format "
                              "torchscript or quantize --backend x86 (a training state like last.pt is not one)"
                              ) from error
    return module.eval(), _parse_metadata(path, extra[f"{METADATA_KEY}.json"])


def read_export_metadata(path: str | Path) -> dict:
    """The metadata an export carries, by the file's suffix: .onnx, .safetensors, else TorchScript."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_metadata(path)
    return read_onnx_metadata(path) if path.suffix == ".onnx" else load_torchscript(path)[1]


def read_onnx_metadata(path: Path) -> dict:
    """The metadata ``export`` or ``quantize`` stored in an ONNX graph, whatever the file's name."""
    try:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as error:  # protobuf raises its own kinds on a corrupt file
        raise CheckpointError(f"{path} is not a readable onnx model: {error}") from error
    return _parse_metadata(path, props.get(METADATA_KEY, ""))


def _parse_metadata(path: Path, text: str) -> dict:
    if not text:
        raise CheckpointError(f"{path} carries no resnetlab metadata (classes, preprocessing); "
                              "write it with resnetlab export or quantize")
    return json.loads(text)


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


def onnxruntime_runner(graph: bytes | Path):
    """``run(images) -> logits`` for an ONNX graph (bytes or file) on ONNX Runtime's CPU provider,
    on torch's thread count."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("running ONNX models needs ONNX Runtime: pip install onnxruntime onnx") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                           providers=["CPUExecutionProvider"])

    def run(images: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {"images": images.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(logits)

    # A named dimension ("batch") is dynamic; a number is fixed.
    return shape_checked(run, [size if isinstance(size, int) else None for size in session.get_inputs()[0].shape])


def openvino_runner(model, precision: str = "fp32"):
    """``run(images) -> logits`` for an OpenVINO model or a model file it reads (.onnx), compiled for the
    CPU at batch-1 latency on torch's thread count. ``precision`` is that of the float parts: OpenVINO
    would pick bf16 by itself on CPUs that have it, and the caller chooses here."""
    try:
        import openvino
    except ImportError:
        raise ConfigError("running this model needs OpenVINO: pip install openvino") from None
    compiled = openvino.Core().compile_model(str(model) if isinstance(model, Path) else model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]})
    request = compiled.create_infer_request()

    def run(images: torch.Tensor) -> torch.Tensor:
        result = request.infer({0: images.detach().float().contiguous().numpy()})
        return torch.from_numpy(result[compiled.output(0)].copy())

    # Checked here: given another image size, OpenVINO returned the previous call's logits, with no error.
    return shape_checked(run, [dim.get_length() if dim.is_static else None
                               for dim in compiled.input(0).get_partial_shape()])


def shape_checked(run: Callable[[torch.Tensor], torch.Tensor], graph_shape: list[int | None]):
    """``run`` for a graph whose input has ``graph_shape`` (None: a dynamic dimension). A fixed batch
    size (``export --static-batch``) takes any batch in chunks of it; images of another shape than the
    graph's fixed one are refused in one line."""
    batch, *image_shape = graph_shape

    def checked(images: torch.Tensor) -> torch.Tensor:
        if images.dim() != len(graph_shape):
            raise ConfigError(f"this model's graph takes a {len(graph_shape)}-D batch of images, not a "
                              f"{images.dim()}-D tensor of shape {tuple(images.shape)}")
        if not all(size is None or size == actual for size, actual in zip(image_shape, images.shape[1:])):
            wanted = "x".join("*" if size is None else str(size) for size in image_shape)
            raise ConfigError(f"this model's graph takes batches of {wanted} images (channels x height x width), "
                              f"not {'x'.join(map(str, images.shape[1:]))}: resize the images to that size")
        if batch is None or len(images) == batch:
            return run(images)
        if len(images) % batch:
            raise ConfigError(f"this model's graph takes batches of exactly {batch} images, not {len(images)}: "
                              "export it again without --static-batch")
        return torch.cat([run(chunk) for chunk in images.split(batch)])

    return checked
