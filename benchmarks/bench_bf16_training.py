"""Training steps on CPU: fp32 vs bf16 autocast, in one process, interleaved (synthetic batches).

bf16 pays only where the CPU multiplies bf16 in hardware (AVX-512 BF16, AMX); `--precision auto`
keeps fp32 on CPUs, and training says when bf16 is there to take.

    .venv/bin/python benchmarks/bench_bf16_training.py [--threads 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from resnetlab import create_model
from resnetlab.hardware import has_native_bf16

CASES = [("cifar_resnet20", 128, 32), ("resnet50", 16, 224)]  # model, batch, input side


def step_seconds(model, optimizer, images, labels, bf16: bool, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"native bf16: {has_native_bf16()}; {args.threads} threads; median step of {args.rounds} rounds")
    for name, batch, side in CASES:
        model = create_model(name, num_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        images, labels = torch.randn(batch, 3, side, side), torch.randint(0, 10, (batch,))
        step_seconds(model, optimizer, images, labels, bf16=True, steps=2)  # warm-up both paths
        step_seconds(model, optimizer, images, labels, bf16=False, steps=2)
        samples = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                samples[bf16] += step_seconds(model, optimizer, images, labels, bf16, args.steps)
        fp32, bf16 = (batch / statistics.median(samples[key]) for key in (False, True))
        print(f"{name:16s} batch {batch:4d}: fp32 {fp32:7.1f} img/s, bf16 {bf16:7.1f} img/s, ratio {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
