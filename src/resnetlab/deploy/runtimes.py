"""The runtimes that run exported model files, and the metadata each file carries: ONNX Runtime and OpenVINO for
``.onnx`` graphs, AOTInductor for the ``.pt2`` packages of ``export --format pt2`` and ``quantize --backend x86``,
TorchScript for the ``.pt`` files earlier versions wrote. ``files`` loads model files
through them, ``export`` checks what it writes with them, ``optimize`` runs on them."""
from __future__ import annotations

import json
import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..models.weights import METADATA_KEY


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict]:
    """A TorchScript file an earlier resnetlab wrote (export, or quantize --backend x86), on the CPU, and its
    metadata. ``torch.jit.load`` warns of TorchScript's deprecation; the caller tells the user what to do."""
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit.")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # a torch.save pickle (a training state like last.pt), or a corrupt file
        raise CheckpointError(f"{path} is not a TorchScript model, the only .pt model files resnetlab reads (a "
                              "training state like last.pt is not one); today's exports are .onnx or .pt2") from error
    return module.eval(), _parse_metadata(path, extra[f"{METADATA_KEY}.json"])


def quiet_cuda_probe() -> None:
    """Torch's C++ extension builder, which AOTInductor (compiling and loading) and NNCF use, logs that a CPU-only
    machine has no CUDA: true, and nothing for the user to act on."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def load_aoti_package(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """``run(images) -> logits`` for an AOTInductor package ``export --format pt2`` wrote, and its metadata.

    The package holds machine code for the vector instructions of the CPU it was compiled on: one made
    with AVX-512 would crash on a CPU that has only AVX2, so that is refused in one line before it runs."""
    import torch._inductor.cpu_vec_isa as vec_isa

    not_a_package = CheckpointError(f"{path} is not an AOTInductor package; give a .pt2 from resnetlab export "
                                    "--format pt2")
    if not zipfile.is_zipfile(path):  # torch would log a guess about outdated files first
        raise not_a_package
    quiet_cuda_probe()
    try:
        package = torch._inductor.aoti_load_package(str(path))
        stored = package.get_metadata()
    except Exception as error:  # a zip of something else, a package for another device
        raise not_a_package from error
    if stored.get("AOTI_DEVICE_KEY", "cpu") != "cpu":
        raise ConfigError(f"{path} was compiled for {stored['AOTI_DEVICE_KEY']}; .pt2 models run on the CPU here")
    compiled_for = stored.get("AOTI_CPU_ISA", "")
    runnable = {str(isa).upper() for isa in vec_isa.valid_vec_isa_list()}
    if compiled_for and compiled_for not in runnable:
        best = str(vec_isa.pick_vec_isa()).upper() or "no vector instructions"
        raise ConfigError(f"{path} was compiled for CPUs with {compiled_for}; this one has {best}: export it "
                          "again on this machine (or one of its kind)")
    metadata = _parse_metadata(path, stored.get(METADATA_KEY, ""))  # the package's metadata holds ours, as JSON

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return package(images.detach().float().cpu().contiguous())

    side = metadata["preprocessing"]["input_size"]  # the image size it was exported at
    # Free unless the package was compiled for one batch size (x86 INT8: ``compress.pt2e``)
    return shape_checked(run, [metadata.get("batch"), metadata["config"]["in_chans"], side, side]), metadata


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
