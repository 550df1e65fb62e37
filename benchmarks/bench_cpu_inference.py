"""ResNet-50 CPU inference, batch 1, fp32: ``optimize`` against every peer, all in one process.

Rows: torchvision and timm eager; the peers run as a user would run them on torchvision's model
(Inductor with freezing, ONNX Runtime on the exported graph, OpenVINO held to fp32); then our
``optimize`` with each backend and with ``auto``. Rows are measured in interleaved rounds, so a
slow spell of this shared machine hits them all; each row's figure is its median over all runs.

    .venv/bin/python benchmarks/bench_cpu_inference.py [--threads 2] [--rounds 7] [--runs 5]
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import timm
import torch
import torchvision

from resnetlab import count_macs, create_model
from resnetlab.hardware import cpu_peak, sgemm_gflops
from resnetlab.deploy.optimize import backend_available, optimize

CPU = torch.device("cpu")


def torchvision_eager(model, example):
    def run(images):
        with torch.inference_mode():
            return model(images)
    return run


def inductor_peer(model, example):
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model)

    def run(images):
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(images)
    return run


def onnxruntime_peer(model, example):
    import onnxruntime

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["x"], dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"x": images.numpy()})[0]


def openvino_peer(model, example):
    import openvino

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = openvino.convert_model(model, example_input=example)
    compiled = openvino.Core().compile_model(converted, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": "f32"})  # it would choose bf16 on CPUs that have it
    request = compiled.create_infer_request()
    return lambda images: request.infer({0: images.numpy()})[compiled.output(0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each row per round")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = torchvision.models.resnet50().eval()
    ours = create_model("resnet50").eval()
    ours.load_state_dict(reference.state_dict())  # the same weights in every row
    peer_timm = timm.create_model("resnet50", pretrained=False).eval()
    peer_timm.load_state_dict(reference.state_dict())
    example = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad():
        expected = reference(example)

    rows = {"torchvision eager": torchvision_eager(reference, example),
            "timm eager": torchvision_eager(peer_timm, example)}
    peers = {"compile": ("Inductor+freezing (peer)", inductor_peer),
             "onnxruntime": ("onnxruntime (peer)", onnxruntime_peer),
             "openvino": ("OpenVINO fp32 (peer)", openvino_peer)}
    for backend, (label, build) in peers.items():
        if backend_available(backend, CPU):
            rows[label] = build(reference, example)
    for backend in ("eager", "compile", "onnxruntime", "openvino", "auto"):
        if backend == "auto" or backend_available(backend, CPU):
            optimized = optimize(ours, backend, input_size=(args.size, args.size))
            rows[f"optimize({backend})" + (f" -> {optimized.backend}" if backend == "auto" else "")] = optimized

    for label, run in rows.items():  # warm up (and compile) outside the timed rounds; check outputs
        for _ in range(3):
            logits = torch.as_tensor(run(example))
        difference = (logits - expected).abs().max().item()
        assert difference < 1e-3, f"{label}: max abs difference {difference} from torchvision"

    times = {label: [] for label in rows}
    for _ in range(args.rounds):
        for label, run in rows.items():
            for _ in range(args.runs):
                start = time.perf_counter()
                run(example)
                times[label].append(time.perf_counter() - start)

    macs = count_macs(create_model("resnet50"), args.size)
    peak = cpu_peak(args.threads)
    measured = sgemm_gflops()
    base = 1 / statistics.median(times["torchvision eager"])
    best_peer = max(1 / statistics.median(times[label]) for label in times if "(peer)" in label)
    print(f"resnet50 {args.size}x{args.size}, batch 1, fp32, {args.threads} threads, {macs / 1e9:.3f} GMACs; "
          f"{args.rounds} rounds x {args.runs} runs, medians")
    print(f"peak: {peak.description}")
    print(f"sgemm 2048x2048 on {args.threads} threads: {measured:.0f} GFLOP/s measured")
    print(f"{'row':36s} {'img/s':>7s} {'ms':>7s} {'p90 ms':>7s} {'x tv':>6s} {'x best peer':>11s} "
          f"{'of peak':>8s} {'of sgemm':>8s}")
    for label, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        achieved = 2 * macs / median / 1e9
        of_peak = f"{achieved / peak.gflops:8.0%}" if peak.gflops else f"{'-':>8s}"
        print(f"{label:36s} {1 / median:7.2f} {1000 * median:7.1f} {1000 * p90:7.1f} {1 / median / base:6.2f} "
              f"{1 / median / best_peer:11.2f} {of_peak} {achieved / measured:8.0%}")


if __name__ == "__main__":
    main()
