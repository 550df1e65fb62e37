"""INT8 post-training static quantization with ONNX Runtime, calibrated on real images.

The model is exported to ONNX, its batch norms folded into the convolutions and Conv+ReLU fused
(``quant_pre_process``), then every convolution and the classifier get INT8 weights, one scale per
output channel, and INT8 activations with ranges measured on the calibration images. The residual
additions run on the dequantised values between quantize/dequantize pairs (QDQ format), which
ONNX Runtime fuses into integer kernels.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import ConfigError, DataError
from ..export import METADATA_KEY, onnx_bytes, refuse_deformable_onnx
from ..image_input import normalize, read_crop
from ..models import ResNet
from ..models.weights import model_metadata
from ..predict import image_paths

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
CALIBRATION_BATCH = 16


def calibration_batches(model: ResNet, folder: str | Path, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` readable images under ``folder`` (any layout), as the model's normalised input."""
    if not Path(folder).is_dir():
        raise DataError(f"{folder} is not a folder; calibrate with a folder of real images like those the "
                        "model will see (a few hundred is plenty)")
    paths = image_paths([folder])[:limit]  # an empty folder is an error there
    crops = []
    for path in paths:
        try:
            crops.append(read_crop(path, model.preprocessing))
        except DataError:
            continue  # a calibration set only needs enough good images, not every one
    if not crops:
        raise DataError(f"none of the {len(paths)} files under {folder} could be read as images")
    images = normalize(torch.stack(crops), model.preprocessing)
    return list(images.split(CALIBRATION_BATCH))


def quantize_model(model: ResNet, calibration: list[torch.Tensor], out: str | Path,
                   method: str = "minmax") -> Path:
    """Write ``out`` (.onnx): ``model`` with INT8 weights and activations, with its metadata."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"the INT8 model is an ONNX graph: give --out a path ending in .onnx, not {out.name}")
    refuse_deformable_onnx(model)
    model = model.eval()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches: Iterator[torch.Tensor] = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    metadata = {**model_metadata(model), "precision": "int8", "calibration": {
        "method": method, "images": sum(len(batch) for batch in calibration)}}
    with tempfile.TemporaryDirectory() as work:
        fp32, prepared, int8 = (Path(work) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(onnx_bytes(model, calibration[0][:1]))
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile,
                                          "entropy": CalibrationMethod.Entropy}[method])
        graph = onnx.load(str(int8))
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        with atomic_path(out) as tmp:
            onnx.save(graph, str(tmp))
    return out
