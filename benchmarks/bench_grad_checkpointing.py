"""Training memory with and without gradient checkpointing: one SGD step, each in a fresh process.

Peak resident memory (CPU, ``ru_maxrss``) or peak allocated memory (CUDA) of a process that builds
the model and takes a forward-backward-step on random images; the step time is the second of two.

    .venv/bin/python benchmarks/bench_grad_checkpointing.py [--model resnet152] [--batch 16] [--size 224]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def one_process(model_name: str, batch: int, size: int, checkpointing: bool) -> dict:
    from resnetlab import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(model_name).to(device).train()
    model.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"device": device.type, "peak_bytes": peak, "step_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_process(args.model, args.batch, args.size, args.one == "on")))
        return
    results = {}
    for mode in ("off", "on"):
        command = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch),
                   "--size", str(args.size), "--one", mode]
        results[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    device = results["off"]["device"]
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, one SGD step, {device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}")
    what = "peak allocated" if device == "cuda" else "peak RSS"
    print(f"{'checkpointing':>13} {what + ' GiB':>18} {'step s':>8}")
    for mode in ("off", "on"):
        print(f"{mode:>13} {results[mode]['peak_bytes'] / 2**30:>18.2f} {results[mode]['step_s']:>8.2f}")
    print(f"memory on/off: {results['on']['peak_bytes'] / results['off']['peak_bytes']:.2f}, "
          f"time on/off: {results['on']['step_s'] / results['off']['step_s']:.2f}")


if __name__ == "__main__":
    main()
