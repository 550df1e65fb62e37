"""Our model against the peer library's same-named one, forward pass on CPU, in one process.

The peer is torchvision for its names, timm for the rest (``--peer`` chooses). Both models get the
same weights and the same input; runs are interleaved (ours, theirs, ours, ...) so machine noise
hits both alike, and medians are compared. The goal: ratio (peer time / our time) >= 0.97, i.e.
ours is not slower.

    .venv/bin/python benchmarks/bench_forward.py [--model resnet50] [--peer auto|torchvision|timm]
        [--batch-sizes 1,16] [--repeats 15]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torchvision

from resnetlab import create_model, load_weights


def timed_forward(model: torch.nn.Module, images: torch.Tensor) -> float:
    start = time.perf_counter()
    model(images)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--peer", choices=("auto", "torchvision", "timm"), default="auto")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()

    peer = args.peer
    if peer == "auto":
        peer = "torchvision" if args.model in torchvision.models.list_models() else "timm"
    torch.manual_seed(0)
    if peer == "torchvision":
        reference, version = torchvision.models.get_model(args.model, weights=None).eval(), torchvision.__version__
    else:
        import timm

        reference, version = timm.create_model(args.model).eval(), timm.__version__
    ours = create_model(args.model).eval()
    load_weights(ours, reference.state_dict())
    print(f"{args.model}, {args.input_size}x{args.input_size}, fp32, eager, CPU: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {peer} {version}")
    print(f"{'batch':>5} {'ours ms':>9} {'peer ms':>9} {'ours img/s':>11} {'peer img/s':>11} {'ratio peer/ours':>16}")
    with torch.inference_mode():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            images = torch.randn(batch, 3, args.input_size, args.input_size)
            assert torch.allclose(ours(images), reference(images), atol=1e-4)  # also warms both up
            times = {"ours": [], "tv": []}
            for repeat in range(args.repeats):
                order = [("ours", ours), ("tv", reference)]
                for name, model in order if repeat % 2 == 0 else reversed(order):
                    times[name].append(timed_forward(model, images))
            ours_s, tv_s = statistics.median(times["ours"]), statistics.median(times["tv"])
            print(f"{batch:>5} {ours_s * 1e3:>9.1f} {tv_s * 1e3:>9.1f} {batch / ours_s:>11.2f} "
                  f"{batch / tv_s:>11.2f} {tv_s / ours_s:>16.3f}")


if __name__ == "__main__":
    main()
