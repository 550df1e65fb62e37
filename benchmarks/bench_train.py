"""Training throughput: our engine's epoch against a bare loop over the same model and tensors.

Both train the same cifar_resnet20 with the same SGD settings, in one process, epochs
interleaved (engine, bare, engine, ...). The bare loop slices a pre-normalised float tensor
of the same images with no augmentation: whatever the engine is slower by is the cost of
its data pipeline (augmentation, normalisation, batching), progress bar and bookkeeping.
Goal: engine >= 0.90 x bare on CIFAR-sized images.

    .venv/bin/python benchmarks/bench_train.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--epochs 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from resnetlab import create_model
from resnetlab.config import DataConfig
from resnetlab.data import build_loaders
from resnetlab.engine.distributed import Context
from resnetlab.engine.loop import StepSettings, cross_entropy_loss, train_one_epoch
from resnetlab.engine.optim import build_optimizer
from resnetlab.engine.schedules import LRSchedule

HERE = Path(__file__).resolve().parent


def extract_subset(archive: Path, into: Path, per_class: int) -> Path:
    """The first ``per_class`` train and test images of each class, extracted from the archive."""
    counts: dict[tuple[str, str], int] = {}

    def wanted(member: tarfile.TarInfo, path: str):
        parts = Path(member.name).parts  # cifar10/<split>/<class>/<file>
        if member.isfile() and len(parts) == 4:
            key = (parts[1], parts[2])
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > per_class:
                return None
        return tarfile.data_filter(member, path)

    with tarfile.open(archive) as tar:
        tar.extractall(into, filter=wanted)
    return into / "cifar10"


def bare_epoch(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    model.train()
    criterion = nn.CrossEntropyLoss()
    start = time.perf_counter()
    order = torch.randperm(len(images))
    for first in range(0, len(images) - batch_size + 1, batch_size):
        index = order[first:first + batch_size]
        loss = criterion(model(images[index]), labels[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (len(images) // batch_size) * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each, interleaved")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found; pass --data path/to/cifar10-jpeg.tar.gz")

    with tempfile.TemporaryDirectory() as tmp:
        root = extract_subset(args.data, Path(tmp), args.per_class)
        model_for_preprocessing = create_model("cifar_resnet20")
        train_loader, _, info = build_loaders(DataConfig(data=str(root), batch_size=args.batch_size),
                                              model_for_preprocessing.preprocessing, seed=0)
        dataset = train_loader.dataset
        # The bare loop's input: the same cached images, normalised once, no augmentation.
        p = model_for_preprocessing.preprocessing
        mean, std = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)
        images = (dataset.images.float() / 255 - mean) / std
        labels = dataset.labels

        torch.manual_seed(0)
        engine_model, bare_model = create_model("cifar_resnet20"), create_model("cifar_resnet20")
        bare_model.load_state_dict(engine_model.state_dict())
        settings = dict(lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4, backbone_lr_scale=1.0)
        engine_optimizer = build_optimizer(engine_model, "sgd", **settings)
        bare_optimizer = build_optimizer(bare_model, "sgd", **settings)
        steps = len(train_loader)
        step_settings = StepSettings(base_lr=0.05, accumulate=1, grad_clip=0.0, autocast_dtype=None,
                                     channels_last=False, max_steps=10**9)
        ctx = Context(rank=0, world_size=1, device=torch.device("cpu"))
        schedule = LRSchedule("constant", total_steps=steps * args.epochs)

        print(f"cifar_resnet20, {info.num_train} real CIFAR-10 images, batch {args.batch_size}, CPU "
              f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        engine_rates, bare_rates = [], []
        for epoch in range(args.epochs):
            train_loader.sampler.set_epoch(epoch)
            stats = train_one_epoch(engine_model, train_loader, engine_optimizer, schedule,
                                    cross_entropy_loss(), step_settings, ctx, step=epoch * steps, epoch=epoch)
            engine_rates.append(stats.images_per_second)
            bare_rates.append(bare_epoch(bare_model, bare_optimizer, images, labels, args.batch_size))
            print(f"epoch {epoch + 1}: engine {engine_rates[-1]:.0f} img/s, bare loop {bare_rates[-1]:.0f} img/s")
        engine, bare = statistics.median(engine_rates), statistics.median(bare_rates)
        print(f"median: engine {engine:.0f} img/s, bare loop {bare:.0f} img/s, ratio {engine / bare:.3f} "
              f"(goal >= 0.90)")


if __name__ == "__main__":
    main()
