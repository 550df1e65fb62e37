"""INT8 vs fp32 on CPU, in one process, for each quantization backend: file size and batch-1 latency
of each model in fp32 and INT8 on the same runtime (ONNX Runtime, OpenVINO, PyTorch's x86 kernels
through AOTInductor, against fp32 eager), INT8 calibrated on real images, and the ratios.

Weights are random unless ``--checkpoint`` gives trained ones: latency and size do not depend on
them; accuracy does, and is measured by ``resnetlab quantize --data`` on a trained checkpoint.

    .venv/bin/python benchmarks/bench_quantize.py [resnet50 cifar_resnet56 ...] [--threads 2] [--calib DIR]
        [--backends onnxruntime,openvino,x86]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from resnetlab import create_model
from resnetlab.bench.measure import measure
from resnetlab.compress.quantize import INT8_BACKENDS, calibration_batches, quantize_model, write_fp32_reference
from resnetlab.demo import extract_demo_data
from resnetlab.deploy.files import load_deployed


def median_ms(run, example, rounds: int) -> float:
    return measure(run, example, warmup=3, repeats=rounds).latency_ms_median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["cifar_resnet20", "cifar_resnet56", "resnet18", "resnet50"])
    parser.add_argument("--backends", default=",".join(INT8_BACKENDS), help="comma-separated (default: all three)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calib", type=Path, help="real images to calibrate on (default: the packaged CIFAR-10 subset)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backends = args.backends.split(",")
    print(f"{args.threads} threads, batch 1, median of {args.rounds} runs; weights random, calibration on real images")
    print(f"{'model':16s} {'backend':12s} {'fp32 MB':>8s} {'int8 MB':>8s} {'eager ms':>9s} {'fp32 ms':>8s} "
          f"{'int8 ms':>8s} {'int8 vs fp32':>12s} {'int8 vs eager':>13s}")
    with tempfile.TemporaryDirectory() as work:
        calib = args.calib or extract_demo_data(Path(work)) / "train"
        for name in args.models:
            model = create_model(name).eval()
            calibration = calibration_batches(model, calib, 128)  # resized to the model's input size
            example = calibration[0][:1]
            with torch.inference_mode():
                eager = median_ms(model, example, args.rounds)
            for backend in backends:
                folder = Path(work) / f"{name}-{backend}"
                folder.mkdir()
                fp32_path = write_fp32_reference(model, backend, folder)
                int8_path = quantize_model(model, calibration, folder / f"int8{INT8_BACKENDS[backend]}", backend=backend)
                fp32 = median_ms(load_deployed(fp32_path), example, args.rounds)
                int8 = median_ms(load_deployed(int8_path), example, args.rounds)
                print(f"{name:16s} {backend:12s} {fp32_path.stat().st_size / 1e6:8.1f} "
                      f"{int8_path.stat().st_size / 1e6:8.1f} {eager:9.2f} {fp32:8.2f} {int8:8.2f} "
                      f"{fp32 / int8:11.2f}x {eager / int8:12.2f}x", flush=True)


if __name__ == "__main__":
    main()
