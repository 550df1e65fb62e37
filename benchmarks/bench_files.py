"""Model files side by side in one process: batch-1 CPU latency, measured in interleaved rounds.

Any files ``load_deployed`` takes (.safetensors, .onnx, .pt), e.g. the post-training and the
quantization-aware INT8 graphs of one model. Each round times every file in turn, so a busy
moment of the machine hits them all alike; the medians over rounds, and each file's ratio to the
first, are printed.

    .venv/bin/python benchmarks/bench_files.py FILE FILE [...] [--threads 1] [--rounds 20] [--calls 50]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from resnetlab.bench.measure import side_by_side
from resnetlab.deploy.files import load_deployed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50, help="timed calls per file per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # before loading: the runtimes take torch's thread count
    models = [load_deployed(path) for path in args.files]
    side = models[0].preprocessing.input_size
    example = torch.randn(1, models[0].in_chans, side, side)
    rounds = side_by_side(models, example, args.rounds, args.calls)
    first = statistics.median(rounds[0])
    print(f"{args.threads} thread(s), batch 1, median over {args.rounds} rounds of each round's median of "
          f"{args.calls} calls")
    for path, model, times in zip(args.files, models, rounds):
        median = statistics.median(times)
        print(f"{median:8.3f} ms  ({min(times):.3f}-{max(times):.3f})  x{first / median:5.2f}  "
              f"{model.backend:12s} {model.precision:5s} {path}")


if __name__ == "__main__":
    main()
