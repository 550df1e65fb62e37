"""PyTorch's two INT8 paths side by side, in one process: what ``quantize --backend x86`` writes now (torchao's
PT2E, ``X86InductorQuantizer``, compiled by AOTInductor into a batch-1 ``.pt2``) against what it wrote before
(FX graph mode, traced to TorchScript: deprecated in torch 2.14, kept here alone, as the baseline), with a
dynamic-batch PT2E package and fp32 eager beside them. Every INT8 path is calibrated on the same images.

    .venv/bin/python benchmarks/bench_pt2e_int8.py [resnet50 resnet18 ...] [--threads 2] [--rounds 30]

The machine is shared and noisy: the calls alternate between the paths, one call each per round, and each
ratio is the median of the per-round ratios, so a slow spell slows every path alike.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from resnetlab import create_model
from resnetlab.compress.pt2e import calibrated, x86_quantizer
from resnetlab.compress.quantize import calibration_batches, quantize_model
from resnetlab.demo import extract_demo_data
from resnetlab.deploy.export import exported_program, save_aoti_package
from resnetlab.deploy.files import load_deployed


def fx_int8(model: torch.nn.Module, calibration: list[torch.Tensor]) -> torch.jit.ScriptModule:
    """The x86 INT8 model as resnetlab made it before PT2E: FX ``prepare_fx``/``convert_fx``, TorchScript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecations this benchmark measures against
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        with torch.no_grad():
            prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (calibration[0][:1],))
            for images in calibration:
                prepared(images)
            return torch.jit.trace(convert_fx(prepared), calibration[0][:1])


def interleaved_ms(runs: dict, example: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    times = {label: [] for label in runs}
    with torch.no_grad():
        for run in runs.values():
            for _ in range(3):
                run(example)
        for _ in range(rounds):
            for label, run in runs.items():
                start = time.perf_counter()
                run(example)
                times[label].append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet18", "resnet50"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        images = extract_demo_data(Path(work) / "demo")
        for name in args.models:
            model = create_model(name).eval()
            calibration = calibration_batches(model, images, 32)
            example = calibration[0][:1]
            now = quantize_model(model, calibration, Path(work) / f"{name}.int8.pt2", backend="x86")
            dynamic = Path(work) / f"{name}.int8.dynamic.pt2"
            converted = calibrated(model, calibration, x86_quantizer(is_qat=False))
            save_aoti_package(exported_program(converted, example), dynamic, {})
            runs = {"fp32 eager": model, "INT8 FX, TorchScript (before)": fx_int8(model, calibration),
                    "INT8 PT2E .pt2, batch 1 (now)": load_deployed(now),
                    "INT8 PT2E .pt2, dynamic batch": torch._inductor.aoti_load_package(str(dynamic))}
            times = interleaved_ms(runs, example, args.rounds)
            before = times["INT8 FX, TorchScript (before)"]
            print(name, "  ".join(f"{label} {statistics.median(ms):.2f} ms" for label, ms in times.items()))
            for label in ("INT8 PT2E .pt2, batch 1 (now)", "INT8 PT2E .pt2, dynamic batch"):
                ratio = statistics.median(b / t for b, t in zip(before, times[label]))
                print(f"  {label} vs FX: {ratio:.2f}x (1.00x: as fast)")
            eager = times["fp32 eager"]
            print(f"  now vs fp32 eager: "
                  f"{statistics.median(e / t for e, t in zip(eager, times['INT8 PT2E .pt2, batch 1 (now)'])):.2f}x")


if __name__ == "__main__":
    main()
