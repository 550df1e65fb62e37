"""Training img/s on synthetic batches: our ResNet eager and compiled against torchvision's, one process.

Made for a GPU: ResNet-50, batch 256, bf16 autocast, channels_last, SGD with momentum. Rows are
timed in interleaved rounds, and each row's figure is its median step. The measure issue's anchor
is NVIDIA's ResNet-50 v1.5 at 2,470 img/s training on one A100 with AMP (NVIDIA
DeepLearningExamples' published figure). `resnetlab train --compile --channels-last --precision
bf16` trains the way the "ours, torch.compile" row does.

    .venv/bin/python benchmarks/bench_training_throughput.py [--device cuda] [--batch-size 256]
    .venv/bin/python benchmarks/bench_training_throughput.py --device cpu --model resnet18 --batch-size 8 \
        --size 64 --steps 2 --rounds 2      # a quick look on a CPU
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torchvision

from resnetlab import create_model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(model, optimizer, images, labels, dtype: torch.dtype | None, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        synchronize(images.device)
        start = time.perf_counter()
        with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(images.device)
        times.append(time.perf_counter() - start)
    return times


def rows(name: str, device: torch.device, memory_format: torch.memory_format, compile_ours: bool) -> dict:
    """Each row: (model, its optimizer); the models start from the same weights."""
    torchvision_model = getattr(torchvision.models, name)().to(device, memory_format=memory_format)
    ours = create_model(name).to(device, memory_format=memory_format)
    ours.load_state_dict(torchvision_model.state_dict())
    models = {f"torchvision {name}, eager": torchvision_model, f"ours {name}, eager": ours}
    if compile_ours:
        compiled = create_model(name).to(device, memory_format=memory_format)
        compiled.load_state_dict(torchvision_model.state_dict())
        models[f"ours {name}, torch.compile"] = torch.compile(compiled)
    return {label: (model.train(), torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5))
            for label, model in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet50", help="a name both torchvision and resnetlab have")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                        help="autocast dtype (fp16 on CUDA only; a timing needs no loss scaling)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per row first (compiles)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no GPU is visible; use --device cpu for a quick look")
    if args.precision == "fp16" and device.type != "cuda":
        parser.error("--precision fp16 runs on CUDA only; use bf16 or fp32 on a CPU")
    torch.backends.cudnn.benchmark = True
    memory_format = torch.contiguous_format if args.no_channels_last else torch.channels_last
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device).contiguous(
        memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    measured = rows(args.model, device, memory_format, compile_ours=not args.no_compile)
    for model, optimizer in measured.values():
        step_seconds(model, optimizer, images, labels, dtype, args.warmup)
    samples = {label: [] for label in measured}
    for _ in range(args.rounds):
        for label, (model, optimizer) in measured.items():
            samples[label] += step_seconds(model, optimizer, images, labels, dtype, args.steps)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{hardware}; torch {torch.__version__}; batch {args.batch_size} at {args.size}px, {args.precision}, "
          f"{'contiguous' if args.no_channels_last else 'channels_last'}; median step of {args.rounds} rounds "
          f"x {args.steps} steps")
    baseline = args.batch_size / statistics.median(samples[next(iter(samples))])
    for label, times in samples.items():
        img_s = args.batch_size / statistics.median(times)
        spread = args.batch_size / max(times), args.batch_size / min(times)
        print(f"{label:34s} {img_s:9.1f} img/s  (range {spread[0]:.1f}-{spread[1]:.1f})  "
              f"x{img_s / baseline:.2f} torchvision")


if __name__ == "__main__":
    main()
