"""The CIFAR training loader against a bare loop over the same cached tensor, in one process.

The loader (5,000 CIFAR images cached as uint8, batch 128, cifar augmentation: per-image
shift and flip, then normalisation) is timed against plain slices of a random permutation
of the same uint8 tensor, with and without the float normalisation any training loop needs.
Epochs are interleaved so machine noise hits all alike, and medians are compared.

The goal (the loader costs a training loop at most 10% over a bare loop) is then checked
against a cifar_resnet20 training step (forward, backward, SGD) on the same batches: the
loader's extra time per image is reported as a share of bare-loop training time per image.
Timing whole training epochs both ways would measure the same thing with far more noise.

    .venv/bin/python benchmarks/bench_data.py [--data DIR] [--per-class 500] [--repeats 5]
"""
from __future__ import annotations

import argparse
import itertools
import platform
import re
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetlab import create_model
from resnetlab.config import DataConfig
from resnetlab.data import build_loaders
from resnetlab.preprocessing import CIFAR10

SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def extract_subset(archive: Path, into: Path, per_class: int) -> Path:
    """The first ``per_class`` train and 100 test JPEGs of each class, out of the shared archive."""
    pattern = re.compile(r"cifar10/(train|test)/\w+/(\d+)\.jpg")

    def wanted(member: tarfile.TarInfo) -> bool:
        match = pattern.fullmatch(member.name)
        return bool(match) and int(match[2]) < (per_class if match[1] == "train" else 100)

    with tarfile.open(archive) as tar:
        tar.extractall(into, members=[m for m in tar if wanted(m)], filter="data")
    return into / "cifar10"


def seconds_per_image(batches: Iterable) -> float:
    start, count = time.perf_counter(), 0
    for _, labels in batches:
        count += len(labels)
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a CIFAR-10 JPEG folder (default: a subset of ../shared/data)")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batches", type=int, default=10, help="training steps timed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data) if args.data else extract_subset(SHARED_ARCHIVE, Path(scratch), args.per_class)
        config = DataConfig(data=str(root), max_per_class=args.per_class, batch_size=args.batch_size,
                            augment="cifar", cache="memory", workers=0)
        start = time.perf_counter()
        loader, _, info = build_loaders(config, CIFAR10)
        build_s = time.perf_counter() - start
    images, labels = loader.dataset.images, loader.dataset.labels
    batch = args.batch_size
    scale = 1 / (255 * torch.tensor(CIFAR10.std).view(1, 3, 1, 1))
    shift = torch.tensor(CIFAR10.mean).view(1, 3, 1, 1) * 255 * scale

    def bare(normalise: bool):
        order = torch.randperm(len(images))
        for start in range(0, len(order) - batch + 1, batch):  # full batches, as the loader's drop_last
            index = order[start:start + batch]
            chunk = images.index_select(0, index)
            yield (chunk.float().mul_(scale).sub_(shift) if normalise else chunk), labels.index_select(0, index)

    epoch = itertools.count()

    def from_loader():
        loader.sampler.set_epoch(next(epoch))
        return loader

    print(f"{info.summary()}; built in {build_s:.1f} s")
    print(f"batch {batch}, CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")

    sources = {"bare uint8 slices": lambda: bare(False), "bare slices, normalised": lambda: bare(True),
               "resnetlab loader": from_loader}
    rates = compare(sources, args.repeats)
    print(f"{'data only':<26} {'img/s':>10} {'uint8 slices / this':>20} {'normalised slices / this':>25}")
    for name, rate in rates.items():
        print(f"{name:<26} {rate:>10,.0f} {rates['bare uint8 slices'] / rate:>20.2f} "
              f"{rates['bare slices, normalised'] / rate:>25.2f}")

    torch.manual_seed(0)
    model = create_model("cifar_resnet20").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step_seconds = []
    for step, (inputs, targets) in enumerate(bare(True)):
        if step > args.train_batches:
            break
        start = time.perf_counter()
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step > 0:  # the first step warms up
            step_seconds.append(time.perf_counter() - start)
    train_per_image = statistics.median(step_seconds) / batch
    bare_per_image = 1 / rates["bare slices, normalised"] + train_per_image
    extra_per_image = 1 / rates["resnetlab loader"] - 1 / rates["bare slices, normalised"]
    print(f"cifar_resnet20 training step: {batch / statistics.median(step_seconds):,.0f} img/s "
          f"(median of {len(step_seconds)} steps)")
    print(f"loader's extra time per image: {extra_per_image * 1e6:.1f} us = "
          f"{extra_per_image / bare_per_image:+.2%} on a bare training loop (goal: at most +10%)")


def compare(sources: dict[str, Callable[[], Iterable]], repeats: int) -> dict[str, float]:
    """Median images per second of each source over ``repeats`` epochs, after one warm-up epoch each."""
    for make in sources.values():
        seconds_per_image(make())
    seconds = {name: [] for name in sources}
    for repeat in range(repeats):
        names = list(sources) if repeat % 2 == 0 else list(reversed(sources))  # interleaved
        for name in names:
            seconds[name].append(seconds_per_image(sources[name]()))
    return {name: 1 / statistics.median(values) for name, values in seconds.items()}


if __name__ == "__main__":
    main()
