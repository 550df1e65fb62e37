"""INT8 post-training static quantization, calibrated on real images, for one of three runtimes.

Each backend quantizes with its own runtime's tool, so that the runtime recognises every pattern:

- ``onnxruntime`` (``int8_backend``'s choice on CPUs with VNNI): the model is exported to ONNX, its
  batch norms folded into the convolutions and Conv+ReLU fused (``quant_pre_process``); ONNX
  Runtime's ``quantize_static`` gives every convolution and the classifier INT8 weights, one scale
  per output channel, and INT8 activations with ranges measured on the calibration images. The
  residual additions run on the dequantised values between quantize/dequantize pairs (QDQ format),
  which ONNX Runtime fuses into integer kernels.
- ``openvino`` (its choice on CPUs without VNNI): NNCF, OpenVINO's quantization tool, quantizes the
  same fp32 ONNX graph (per-channel weights, the quantize/dequantize pairs where OpenVINO's CPU
  plugin fuses them) into a QDQ ``.onnx`` whose metadata names OpenVINO as its runtime: one file like
  the others, not an IR .xml/.bin pair, and ``load_deployed`` hands it to OpenVINO, which runs the
  pairs as its INT8 kernels. Activation ranges are the calibration images' min and max, without bias
  correction: NNCF's defaults (averaged per-batch ranges, fast bias correction) kept 86% and 96% of
  the predictions of the test suite's two CIFAR-10 classifiers (300 real test images), min-max
  without correction 99% of both.
- ``x86``: PyTorch's own INT8 kernels (oneDNN, through Inductor), by torchao's PT2E (``pt2e.py``): the
  model captured by ``torch.export``, annotated by ``X86InductorQuantizer`` (Conv+BN+ReLU and each residual
  addition with its ReLU as units, weights per channel, activations observed with histograms), then
  compiled by AOTInductor into a ``.pt2`` package with the metadata, for batch 1, the batch it measured
  as fast as the deprecated FX/TorchScript path at (``benchmarks/bench_pt2e_int8.py``; a dynamic batch
  ran at 0.75x); larger batches run in chunks of it.

Every file carries the model's metadata with ``precision: int8``, ``runtime`` (the backend) and
``int8`` (``int8_target.Int8Layout``: 7-bit weights for CPUs without VNNI, where 8 bits can clip).
``qat.py`` writes the same files after quantization-aware training.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import ConfigError, DataError
from ..deploy.export import onnx_bytes
from ..deploy.optimize import backend_available
from ..deploy.runtimes import quiet_cuda_probe
from ..models.weights import METADATA_KEY
from ..image_input import check_reads_image_files, normalize, read_crop
from ..models import ResNet
from ..models.weights import model_metadata
from ..data.folders import image_paths
from .int8_target import Int8Layout, int8_layout, resolve_target

logger = logging.getLogger("resnetlab")
INT8_BACKENDS = {"onnxruntime": ".onnx", "openvino": ".onnx", "x86": ".pt2"}  # backend -> its file's suffix
REQUIRES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "nncf", "openvino"), "x86": ()}
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "x86": "PyTorch x86"}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # ONNX Runtime's; NNCF and FX have their own
CALIBRATION_BATCH = 16


METHODS = ("ptq", "qat")
QAT_EPOCHS, QAT_LR, QAT_BATCH = 1, 1e-3, 64  # --method qat: a short fine-tune from trained weights
CALIB_IMAGES = 256  # --method ptq: real images to set the activation ranges with


@dataclass(frozen=True)
class QuantizeSettings:
    """What ``resnetlab quantize`` does. None is "not given": each option belongs to one method, and one given to
    the other method is an error, not silently ignored; the defaults are the constants above."""

    method: str = "ptq"  # post-training quantization, or quantization-aware training
    backend: str = "auto"  # the runtime the INT8 file is for; "auto": ``int8_backend``'s choice
    int8_target: str | None = None  # the CPUs the file is laid out for (``int8_target``); None: this CPU's kind
    calib: Path | None = None  # ptq: a folder of real images (any layout)
    calib_images: int | None = None  # ptq: how many of them
    calibration: str | None = None  # ptq on ONNX Runtime: how ranges are set from them (CALIBRATION_METHODS)
    data: str | None = None  # qat: the image folder to fine-tune on; either: top-1 before and after
    epochs: int | None = None  # qat
    lr: float | None = None  # qat: peak learning rate, cosine-decayed
    batch_size: int | None = None  # qat

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown quantization method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "ptq":
            if self.calib is None:
                raise ConfigError("--method ptq calibrates on real images: give --calib DIR (a few hundred images "
                                  "like those the model will see)")
            if self.calib_images is not None and self.calib_images < 1:
                raise ConfigError(f"--calib-images must be at least 1, not {self.calib_images}")
            given = [flag for flag, value in (("--epochs", self.epochs), ("--lr", self.lr),
                                              ("--batch-size", self.batch_size)) if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} set the fine-tune of --method qat; --method ptq does not "
                                  "train")
            return
        if self.data is None:
            raise ConfigError("--method qat fine-tunes on real images: give --data DIR, a folder with train/ and "
                              "val/ or test/ splits")
        if self.calib is not None or self.calibration is not None or self.calib_images is not None:
            raise ConfigError("--method qat learns its ranges while fine-tuning on --data; --calib, --calib-images "
                              "and --calibration are for --method ptq")

    @property
    def resolved_backend(self) -> str:
        """The backend for "auto", refused with an --int8-target it does not take."""
        backend = int8_backend(self.backend, self.calibration, self.int8_target or "auto")
        if backend == "x86" and self.int8_target is not None:
            raise ConfigError("--int8-target lays out ONNX files; --backend x86 keeps PyTorch's own settings, "
                              "right on every CPU: drop --int8-target")
        return backend


def calibration_batches(model: ResNet, folder: str | Path, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` readable images under ``folder`` (any layout), as the model's normalised input."""
    check_reads_image_files(model.config.in_chans)
    paths = calibration_paths(folder, limit)
    crops, unreadable = [], []
    for path in paths:
        try:
            crops.append(read_crop(path, model.preprocessing))
        except DataError as error:
            unreadable.append(str(error))  # a calibration set only needs enough good images, not every one
    if not crops:
        raise DataError(f"none of the {len(paths)} files under {folder} could be read as images")
    if unreadable:
        logger.warning("calibrating on %d images: %d of the files under %s were skipped, e.g. %s",
                       len(crops), len(unreadable), folder, unreadable[0])
    images = normalize(torch.stack(crops), model.preprocessing)
    return list(images.split(CALIBRATION_BATCH))


def calibration_paths(folder: str | Path, limit: int) -> list[Path]:
    """``limit`` image files spread evenly over ``folder``'s sorted files: a folder of class folders
    gives every class its share, where the first ``limit`` files would all be of the first class."""
    if not Path(folder).is_dir():
        raise DataError(f"{folder} is not a folder; calibrate with a folder of real images like those the "
                        "model will see (a few hundred is plenty)")
    paths = image_paths([folder])  # an empty folder is an error there
    return [paths[index] for index in torch.linspace(0, len(paths) - 1, min(limit, len(paths))).round().long()]


def int8_backend(backend: str, method: str | None = None, target: str = "auto") -> str:
    """``backend``, or for "auto" the fastest INT8 runtime installed for the ``target`` CPUs
    (``int8_target.resolve_target``): OpenVINO for CPUs without VNNI, where resnet50's INT8 took 43 ms
    on OpenVINO and 80 on ONNX Runtime (BENCHMARKS.md, Zen 3: 2.2x and 2.1x their fp32); ONNX Runtime
    for CPUs with VNNI (Zen 4: 3.4x its fp32, OpenVINO 3.6x). A range ``method`` is ONNX Runtime's
    alone, so "auto" with one is ONNX Runtime."""
    if backend != "auto":
        return backend
    openvino = all(importlib.util.find_spec(module) is not None for module in REQUIRES["openvino"])
    return "openvino" if resolve_target(target) == "no-vnni" and openvino and method is None else "onnxruntime"


def check_backend(backend: str, out: Path, model: ResNet | None = None) -> None:
    """Before any work: the backend is known and installed, ``out`` is its kind of file, the model fits it."""
    if backend not in INT8_BACKENDS:
        raise ConfigError(f"unknown quantization backend {backend!r}; choose one of auto, {', '.join(INT8_BACKENDS)}")
    missing = [module for module in REQUIRES[backend] if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"--backend {backend} needs {', '.join(missing)}: pip install {' '.join(missing)} "
                          "(or pip install 'resnetlab[deploy]')")
    if backend == "x86" and not backend_available("compile", torch.device("cpu")):  # Inductor compiles C++
        raise ConfigError("--backend x86 compiles the INT8 model with AOTInductor, which needs a C++ compiler "
                          "(Debian: apt-get install g++); or use --backend onnxruntime or openvino")
    if out.suffix != INT8_BACKENDS[backend]:
        kind = "an AOTInductor package" if backend == "x86" else "an ONNX file"
        raise ConfigError(f"--backend {backend} writes {kind}: give --out a path ending in "
                          f"{INT8_BACKENDS[backend]}, not {out.name}")
    if isinstance(model, ResNet) and model.config.deformable_stages:  # an HRNet has no deformable convs
        raise ConfigError("INT8 quantization has no kernels or converter for torchvision's deform_conv2d; "
                          "deploy a deformable model in fp32 (resnetlab export)")


def int8_metadata(model: ResNet, backend: str, layout: Int8Layout, **how) -> dict:
    """The model's metadata for its INT8 file: what runs it, for which CPUs, and how it was quantized."""
    return {**model_metadata(model), "precision": "int8", "runtime": backend, "int8": layout.metadata(), **how}


def quantize_model(model: ResNet, calibration: list[torch.Tensor], out: str | Path, method: str | None = None,
                   backend: str = "auto", target: str = "auto") -> Path:
    """Write ``out``: ``model`` with INT8 weights and activations for ``backend``, with its metadata.

    ``method`` chooses how ONNX Runtime sets activation ranges (default minmax); NNCF and PyTorch
    use their own (min-max without bias correction, and histograms). ``target`` chooses the CPUs the
    integers are laid out for (``int8_target``): "auto" is this one's kind. ``backend`` "auto":
    ``int8_backend``'s choice for this CPU.
    """
    out = Path(out)
    backend = int8_backend(backend, method, target)
    check_backend(backend, out, model)
    if method is not None and backend != "onnxruntime":
        raise ConfigError(f"--calibration chooses ONNX Runtime's range method; --backend {backend} calibrates "
                          "with its own tool: leave it out")
    method = method or "minmax"
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    layout = int8_layout(backend, target)
    model = model.eval()
    example = calibration[0][:1]
    metadata = int8_metadata(model, backend, layout, calibration={
        "method": {"onnxruntime": method, "openvino": "nncf minmax", "x86": "histogram"}[backend],
        "images": sum(len(batch) for batch in calibration)})
    if backend == "x86":
        from .pt2e import calibrated, save_x86_package, x86_quantizer

        save_x86_package(calibrated(model, calibration, x86_quantizer(is_qat=False)), example, out, metadata)
    else:
        fp32 = onnx_bytes(model, example)
        int8 = _nncf_int8(fp32, calibration, layout) if backend == "openvino" \
            else _onnxruntime_int8(fp32, calibration, method, layout)
        save_onnx(int8, out, metadata)
    return out


def write_fp32_reference(model: ResNet, backend: str, folder: Path) -> Path:
    """``model`` in fp32 on the backend's runtime (PyTorch eager for x86): what its INT8 file is to be
    compared with."""
    from ..deploy.export import ExportSettings, export_model

    if backend == "x86":
        return export_model(model, folder / "fp32.safetensors", ExportSettings("safetensors")).path
    path = export_model(model, folder / "fp32.onnx").path
    if backend == "openvino":
        import onnx

        save_onnx(onnx.load(str(path)), path, {**model_metadata(model), "runtime": "openvino"})
    return path


def save_onnx(graph, out: Path, metadata: dict) -> None:
    """Write the ONNX ``graph`` to ``out`` atomically, with ``metadata`` as its only resnetlab entry."""
    import onnx

    del graph.metadata_props[:]
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    with atomic_path(out) as tmp:
        onnx.save(graph, str(tmp))


def _nncf_int8(fp32: bytes, calibration: list[torch.Tensor], layout: Int8Layout):
    quiet_cuda_probe()
    import nncf
    import onnx

    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    dataset = nncf.Dataset(calibration, lambda batch: {"images": batch.numpy()})
    # NNCF's overflow fix is the 7-bit weights of every convolution and the classifier.
    settings = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                              disable_bias_correction=True,
                                              overflow_fix=OverflowFix.ENABLE if layout.weight_bits == 7
                                              else OverflowFix.DISABLE)
    return nncf.quantize(onnx.load_from_string(fp32), dataset, subset_size=len(calibration),
                         advanced_parameters=settings)


def _onnxruntime_int8(fp32: bytes, calibration: list[torch.Tensor], method: str, layout: Int8Layout):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches: Iterator[torch.Tensor] = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    with tempfile.TemporaryDirectory() as work:
        source, prepared, int8 = (Path(work) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=layout.weight_bits == 7,  # ONNX Runtime's name for 7-bit weights
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile,
                                          "entropy": CalibrationMethod.Entropy}[method])
        return onnx.load(str(int8))
