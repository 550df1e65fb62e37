"""Every INT8 path a CPU can take, side by side in one process: which one pays on this host.

For each model: fp32 in PyTorch eager, ONNX Runtime and OpenVINO, and INT8 through each path its
runtime offers, timed in interleaved rounds (``bench.measure.side_by_side``) at batch 1, with each
INT8 latency's ratio to the same runtime's fp32:

- ONNX Runtime ``quantize_static``: QDQ and QOperator graphs; U8S8 (uint8 activations, int8 weights)
  with all 8 bits of the weights and with ``reduce_range`` (7-bit weights, the setting ONNX Runtime
  advises for AVX2 and AVX-512 CPUs without VNNI), U8U8, S8S8;
- OpenVINO running NNCF's QDQ graph, with NNCF's overflow fix off (all 8 bits of the weights) and on
  (7-bit weights everywhere, NNCF's setting for CPUs without VNNI);
- PyTorch's x86 kernels (FX graph mode, TorchScript), against fp32 TorchScript.

Weights are random (latency does not depend on them); calibration is on the packaged real CIFAR-10
images, resized to each model's input. Accuracy per setting is measured on trained models by
``tests/test_quantize.py`` and ``resnetlab quantize --data`` (BENCHMARKS.md).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_int8_paths.py [resnet50 resnet18 cifar_resnet20]
        [--threads 2] [--rounds 7] [--calls 10]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from resnetlab import create_model
from resnetlab.hardware import int8_support
from resnetlab.bench.measure import side_by_side
from resnetlab.compress.quantize import calibration_batches, quantize_model, write_fp32_reference
from resnetlab.demo import extract_demo_data
from resnetlab.deploy.files import load_deployed
from resnetlab.deploy.export import onnx_bytes
from resnetlab.deploy.runtimes import onnxruntime_runner

CALIBRATION_IMAGES = 32  # enough for ranges; latency does not depend on them


def onnxruntime_variants(model, calibration: list[torch.Tensor], folder: Path) -> dict[str, Path]:
    """``quantize_static`` with each format and type pairing, on the pre-processed fp32 graph."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    source, prepared = folder / "fp32-source.onnx", folder / "fp32-prepared.onnx"
    source.write_bytes(onnx_bytes(model, calibration[0][:1]))
    quant_pre_process(str(source), str(prepared))
    u8, s8 = QuantType.QUInt8, QuantType.QInt8
    variants = {
        "QDQ U8S8": (QuantFormat.QDQ, u8, s8, False),
        "QDQ U8S8 reduce_range": (QuantFormat.QDQ, u8, s8, True),
        "QDQ U8U8": (QuantFormat.QDQ, u8, u8, False),
        "QDQ S8S8": (QuantFormat.QDQ, s8, s8, False),
        "QOperator U8S8": (QuantFormat.QOperator, u8, s8, False),
        "QOperator U8S8 reduce_range": (QuantFormat.QOperator, u8, s8, True),
    }
    paths = {}
    for name, (quant_format, activations, weights, reduce_range) in variants.items():
        out = folder / f"ort-{name.replace(' ', '-')}.onnx"
        quantize_static(str(prepared), str(out), Reader(), quant_format=quant_format, per_channel=True,
                        activation_type=activations, weight_type=weights, reduce_range=reduce_range)
        paths[name] = out
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet50", "resnet18", "cifar_resnet20"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{int8_support().description}; {args.threads} threads, batch 1, median over {args.rounds} "
          f"interleaved rounds of {args.calls} calls")
    with tempfile.TemporaryDirectory() as work:
        calib = extract_demo_data(Path(work)) / "train"
        for name in args.models:
            folder = Path(work) / name
            folder.mkdir()
            model = create_model(name).eval()
            calibration = calibration_batches(model, calib, CALIBRATION_IMAGES)
            example = calibration[0][:1]
            # (row, runtime whose fp32 it is compared with, callable)
            rows = [("PyTorch eager fp32", None, model)]
            for runtime in ("onnxruntime", "openvino", "x86"):  # each runtime's fp32 file in a folder of its own
                (folder / runtime).mkdir()
            rows.append(("ONNX Runtime fp32", None,
                         load_deployed(write_fp32_reference(model, "onnxruntime", folder / "onnxruntime"))))
            rows += [(f"ONNX Runtime {variant}", "ONNX Runtime fp32", onnxruntime_runner(path))
                     for variant, path in onnxruntime_variants(model, calibration, folder).items()]
            rows.append(("OpenVINO fp32", None,
                         load_deployed(write_fp32_reference(model, "openvino", folder / "openvino"))))
            for target, label in (("vnni", "8-bit weights (overflow fix off)"),
                                  ("no-vnni", "7-bit weights (overflow fix on)")):
                path = quantize_model(model, calibration, folder / f"ov-{target}.onnx", backend="openvino",
                                      target=target)
                rows.append((f"OpenVINO NNCF {label}", "OpenVINO fp32", load_deployed(path)))
            rows.append(("TorchScript fp32", None, load_deployed(write_fp32_reference(model, "x86", folder / "x86"))))
            rows.append(("PyTorch x86 INT8 (FX)", "TorchScript fp32",
                         load_deployed(quantize_model(model, calibration, folder / "x86.pt", backend="x86"))))
            rounds = side_by_side([run for _, _, run in rows], example, rounds=args.rounds, calls=args.calls)
            medians = {row: statistics.median(times) for (row, _, _), times in zip(rows, rounds)}
            print(f"\n{name}\n{'path':48s} {'ms':>8s} {'vs same runtime fp32':>21s} {'vs eager':>9s}")
            for row, reference, _ in rows:
                versus = f"{medians[reference] / medians[row]:20.2f}x" if reference else f"{'':21s}"
                print(f"{row:48s} {medians[row]:8.2f} {versus} "
                      f"{medians['PyTorch eager fp32'] / medians[row]:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
