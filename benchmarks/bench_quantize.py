"""INT8 vs fp32 on CPU, in one process: file size and batch-1 latency of each model through
PyTorch eager, ONNX Runtime fp32 and ONNX Runtime INT8 (calibrated on real images).

Weights are random unless ``--checkpoint`` gives trained ones: latency and size do not depend on
them; accuracy does, and is measured by ``resnetlab quantize --data`` on a trained checkpoint.

    .venv/bin/python benchmarks/bench_quantize.py [resnet50 cifar_resnet56 ...] [--threads 2] [--calib DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from resnetlab import create_model
from resnetlab.bench.measure import measure
from resnetlab.compress.quantize import calibration_batches, quantize_model
from resnetlab.demo import extract_demo_data
from resnetlab.deployed import load_deployed
from resnetlab.export import export_model


def median_ms(run, example, rounds: int) -> float:
    return measure(run, example, warmup=3, repeats=rounds).latency_ms_median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["cifar_resnet20", "cifar_resnet56", "resnet18", "resnet50"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calib", type=Path, help="real images to calibrate on (default: the packaged CIFAR-10 subset)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.threads} threads, batch 1, median of {args.rounds} runs; weights random, calibration on real images")
    print(f"{'model':16s} {'fp32 MB':>8s} {'int8 MB':>8s} {'eager ms':>9s} {'ort fp32 ms':>11s} {'ort int8 ms':>11s} "
          f"{'int8 vs ort fp32':>16s} {'int8 vs eager':>13s}")
    with tempfile.TemporaryDirectory() as work:
        calib = args.calib or extract_demo_data(Path(work)) / "train"
        for name in args.models:
            model = create_model(name).eval()
            calibration = calibration_batches(model, calib, 128)  # resized to the model's input size
            fp32_path = export_model(model, Path(work) / f"{name}.onnx").path
            int8_path = quantize_model(model, calibration, Path(work) / f"{name}.int8.onnx")
            example = calibration[0][:1]
            with torch.inference_mode():
                eager = median_ms(model, example, args.rounds)
            fp32 = median_ms(load_deployed(fp32_path), example, args.rounds)
            int8 = median_ms(load_deployed(int8_path), example, args.rounds)
            print(f"{name:16s} {fp32_path.stat().st_size / 1e6:8.1f} {int8_path.stat().st_size / 1e6:8.1f} "
                  f"{eager:9.2f} {fp32:11.2f} {int8:11.2f} {fp32 / int8:15.2f}x {eager / int8:12.2f}x")


if __name__ == "__main__":
    main()
