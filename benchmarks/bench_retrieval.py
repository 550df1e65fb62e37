"""Retrieval quality of a CIFAR-10-trained cifar_resnet20: precision@10 on the 10,000 test images.

Trains with a plain SGD loop on the real training JPEGs (a few epochs on a CPU), saves the
model with save_weights, embeds every test image through the same path as
``resnetlab embed`` (decode, preprocess, pooled features, L2-normalised), then asks each test
image for its 10 nearest other test images by cosine similarity: precision@10 is the
fraction of those with the query's class (chance: 0.10).

    .venv/bin/python benchmarks/bench_retrieval.py [--epochs 5] [--train-per-class 5000] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetlab import create_model, load_model, save_weights
from resnetlab.data.datasets import decode_files
from resnetlab.data.folders import scan_split
from resnetlab.data.transforms import RandomShiftFlip
from resnetlab.retrieval import embed_images, precision_at_k

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BATCH = 128
LR = 0.1  # peak, per batch of 128; linear warm-up for the first epoch, then linear decay to 0
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4  # on conv and linear weights only (p.ndim > 1)
K = 10


def learning_rate(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return LR * (step + 1) / warmup_steps
    return LR * (total_steps - step) / (total_steps - warmup_steps)


def read_split(split_dir: Path, per_class: int | None) -> tuple[torch.Tensor, torch.Tensor, list[Path], list[str]]:
    """uint8 Nx3x32x32 images, int64 labels, the files and the class names of one split."""
    split = scan_split(split_dir, per_class)
    images, _, _ = decode_files(split.files, (32, 32))
    return images, torch.tensor(split.labels), list(split.files), list(split.class_names)


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int) -> torch.nn.Module:
    model = create_model("cifar_resnet20")
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1) * 255
    model = model.to(memory_format=torch.channels_last).train()  # about 2x faster on CPU
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=LR, momentum=MOMENTUM, nesterov=True)
    augment = RandomShiftFlip()  # pad-4 random crop and mirror, per image, on the whole batch
    steps_per_epoch = len(images) // BATCH
    total_steps = epochs * steps_per_epoch
    step = 0
    for epoch in range(epochs):
        start, losses = time.perf_counter(), []
        order = torch.randperm(len(images))
        for i in range(steps_per_epoch):
            batch = order[i * BATCH:(i + 1) * BATCH]
            x = ((augment(images[batch]).float() - mean) / std).contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps_per_epoch, total_steps)
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        print(f"epoch {epoch + 1}/{epochs}: loss {sum(losses) / len(losses):.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=None, help="default: all 5,000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA, help="cifar10-jpeg.tar.gz")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} does not exist; pass --data path/to/cifar10-jpeg.tar.gz")

    wall = time.perf_counter()
    torch.manual_seed(args.seed)
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.data) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp) / "cifar10"
        images, labels, _, class_names = read_split(root / "train", args.train_per_class)
        print(f"{len(images)} training images decoded", flush=True)
        model = train(images, labels, args.epochs)
        checkpoint = save_weights(model, Path(tmp) / "cifar_resnet20.safetensors", class_names=class_names)

        # Test images go through the same path as `resnetlab embed`: files in, embeddings out.
        model = load_model(checkpoint)
        test_images, test_labels, test_files, _ = read_split(root / "test", None)
        embedded = embed_images(model, test_files, batch_size=256)
        assert not embedded.skipped
        precision = precision_at_k(embedded.embeddings, test_labels, k=K)
        mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1) * 255
        with torch.inference_mode():
            predictions = torch.cat([model((chunk.float() - mean) / std).argmax(1)
                                     for chunk in test_images.split(1000)])
        accuracy = (predictions == test_labels).float().mean().item()

    minutes = (time.perf_counter() - wall) / 60
    print(f"precision@{K} over the {len(test_files):,} CIFAR-10 test images: {precision:.3f} "
          f"(chance 0.100); test accuracy {accuracy:.3f}; {minutes:.1f} min wall")
    print("command: .venv/bin/python benchmarks/bench_retrieval.py " + " ".join(sys.argv[1:]))
    print(json.dumps({"precision_at_10": round(precision, 4), "accuracy": round(accuracy, 4),
                      "epochs": args.epochs, "train_images": len(images), "seed": args.seed,
                      "wall_minutes": round(minutes, 1), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
