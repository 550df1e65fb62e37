"""PyTorch's two INT8 paths side by side, in one process: today's ``quantize --backend x86`` (FX graph
mode, TorchScript) against its successor, torchao's PT2E (``X86InductorQuantizer``) run by
AOTInductor (the ``.pt2`` deployment path) and by ``torch.compile``; fp32 eager and fp32 AOTInductor
beside them. Batch-1 latency medians and the ratios; every INT8 path calibrated on the same images.

    .venv/bin/python benchmarks/bench_pt2e_int8.py [resnet50 resnet18 ...] [--threads 2] [--rounds 30]

It decides when ``quantize --backend x86`` can move to PT2E: when the AOTInductor INT8 column is
at least as fast as the FX one.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

from resnetlab import create_model
from resnetlab.bench.measure import measure
from resnetlab.compress.quantize import _x86_int8, calibration_batches, quiet_quantization
from resnetlab.demo import extract_demo_data
from resnetlab.deploy.export import exported_program, save_aoti_package


def pt2e_int8(model: torch.nn.Module, calibration: list[torch.Tensor]) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    import torchao.quantization.pt2e.inductor_passes.x86  # noqa: F401  (registers Inductor's INT8 fusions)
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86

    example = calibration[0][:2]
    batch = torch.export.Dim("batch", min=1, max=4096)
    # strict: the non-strict capture leaves no source_fn_stack, and the quantizer then takes a ReLU
    # module called twice in a block for one partition with two outputs, and refuses it.
    captured = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=True).module()
    prepared = prepare_pt2e(captured, x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config()))
    with torch.no_grad():
        for images in calibration:
            prepared(images)
    return convert_pt2e(prepared)


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
            fp32_package = Path(work) / f"{name}.pt2"
            save_aoti_package(model, example, fp32_package, {})
            with quiet_quantization():
                fx = torch.jit.trace(_x86_int8(model, calibration), example)
            converted = pt2e_int8(model, calibration)
            int8_package = Path(work) / f"{name}.int8.pt2"
            with tempfile.TemporaryDirectory() as build, torch.no_grad(), inductor_config.patch(freezing=True):
                torch._inductor.aoti_compile_and_package(exported_program(converted, example),
                                                         package_path=str(Path(build) / "int8.pt2"))
                Path(build, "int8.pt2").rename(int8_package)
                compiled = torch.compile(converted)
                compiled(example)
            runs = {"fp32 eager": model, "fp32 AOTI": torch._inductor.aoti_load_package(str(fp32_package)),
                    "INT8 FX (today)": fx, "INT8 PT2E AOTI": torch._inductor.aoti_load_package(str(int8_package))}
            medians = {}
            for label, run in runs.items():
                with torch.no_grad():
                    medians[label] = measure(run, example, warmup=3, repeats=args.rounds).latency_ms_median
            with torch.no_grad(), inductor_config.patch(freezing=True):
                medians["INT8 PT2E compile"] = measure(compiled, example, warmup=3,
                                                       repeats=args.rounds).latency_ms_median
            print(name, "  ".join(f"{label} {ms:.2f} ms" for label, ms in medians.items()))
            print(f"  PT2E AOTI vs FX: {medians['INT8 FX (today)'] / medians['INT8 PT2E AOTI']:.2f}x   "
                  f"PT2E compile vs FX: {medians['INT8 FX (today)'] / medians['INT8 PT2E compile']:.2f}x   "
                  f"FX INT8 vs fp32 eager: {medians['fp32 eager'] / medians['INT8 FX (today)']:.2f}x")


if __name__ == "__main__":
    main()
