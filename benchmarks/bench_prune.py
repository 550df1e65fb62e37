"""Pruned vs unpruned on CPU, in one process: parameters, MACs and measured batch-1 latency.

Pruning is only worth it if latency falls with the MACs: each model runs eager and through
ONNX Runtime, before and after ``prune_model`` (random weights: speed does not depend on them),
pruned both ways: inner and residual-stream channels, and inner channels only (the default), and
with the pruned widths rounded to each ``--round-to`` multiple of channels.

    .venv/bin/python benchmarks/bench_prune.py [cifar_resnet56 resnet50 ...] [--target-macs 0.5] [--threads 2]
        [--round-to 1,8,16]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from resnetlab import count_macs, count_parameters, create_model
from resnetlab.bench.measure import measure
from resnetlab.compress.prune import prune_model
from resnetlab.errors import ConfigError
from resnetlab.deploy.optimize import optimize


BACKENDS = ("eager", "onnxruntime")


def median_ms(run, example, rounds: int) -> float:
    return measure(run, example, warmup=3, repeats=rounds).latency_ms_median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["cifar_resnet56", "resnet18", "resnet50"])
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--round-to", default="1,8,16", help="comma-separated channel multiples (default 1,8,16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.threads} threads, batch 1, median of {args.rounds} runs, target {args.target_macs:g} of the MACs")
    multiples = [int(multiple) for multiple in args.round_to.split(",")]
    print(f"{'model':16s} {'pruned':8s} {'N':>3s} {'params':>12s} {'GMACs':>13s} {'eager ms':>15s} {'x':>5s} "
          f"{'ort ms':>13s} {'x':>5s}")
    for name in args.models:
        model = create_model(name).eval()
        side = model.preprocessing.input_size
        example = torch.randn(1, 3, side, side)
        full = {backend: median_ms(optimize(model, backend), example, args.rounds) for backend in BACKENDS}
        for (scope, keep_stream), multiple in itertools.product((("all", False), ("inner", True)), multiples):
            try:
                pruned = prune_model(model, args.target_macs, keep_stream=keep_stream, multiple=multiple).eval()
            except ConfigError as error:  # the widths cannot shrink that far in steps of `multiple`
                print(f"{name:16s} {scope:8s} {multiple:3d} {error}")
                continue
            fast = {backend: median_ms(optimize(pruned, backend), example, args.rounds) for backend in BACKENDS}
            print(f"{name:16s} {scope:8s} {multiple:3d} {count_parameters(model) / 1e6:5.2f}->{count_parameters(pruned) / 1e6:5.2f}M "
                  f"{count_macs(model) / 1e9:6.3f}->{count_macs(pruned) / 1e9:5.3f} "
                  f"{full['eager']:7.2f}->{fast['eager']:6.2f} {full['eager'] / fast['eager']:5.2f} "
                  f"{full['onnxruntime']:6.2f}->{fast['onnxruntime']:5.2f} "
                  f"{full['onnxruntime'] / fast['onnxruntime']:5.2f}")


if __name__ == "__main__":
    main()
