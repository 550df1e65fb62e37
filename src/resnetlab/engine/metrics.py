"""Classification metrics accumulated over batches: top-1, top-5, per-class, confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .distributed import sum_over_processes


class ClassificationMeter:
    """Accumulates a confusion matrix, top-k hits and the loss; cheap enough for every batch."""

    def __init__(self, num_classes: int, topk: tuple[int, ...] = (1, 5)):
        self.num_classes = num_classes
        self.topk = tuple(k for k in topk if k <= num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        # [hits at each k..., loss sum, image count], float64 so one all-reduce carries them all
        self.totals = torch.zeros(len(self.topk) + 2, dtype=torch.float64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: float = 0.0) -> None:
        logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
        top = logits.topk(max(self.topk), dim=1).indices
        for i, k in enumerate(self.topk):
            self.totals[i] += (top[:, :k] == labels[:, None]).any(dim=1).sum()
        self.totals[-2] += loss_sum
        self.totals[-1] += len(labels)
        pairs = labels * self.num_classes + top[:, 0]
        self.confusion += torch.bincount(pairs, minlength=self.num_classes ** 2).view_as(self.confusion)

    def sum_over_processes(self, device: torch.device) -> None:
        """Add up every process's counts (each evaluated its own shard)."""
        packed = sum_over_processes(torch.cat([self.confusion.flatten(), self.totals]).to(device)).cpu()
        self.confusion = packed[: self.confusion.numel()].view_as(self.confusion)
        self.totals = packed[self.confusion.numel():]

    def result(self) -> ClassificationResult:
        count = max(self.totals[-1].item(), 1)
        hits = dict(zip(self.topk, (self.totals[: len(self.topk)] / count).tolist()))
        confusion = self.confusion.round().long()
        return ClassificationResult(
            count=int(self.totals[-1].item()),
            loss=self.totals[-2].item() / count,
            top1=hits[1],
            top5=hits.get(5),
            per_class=(confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist(),
            confusion=confusion,
        )


@dataclass
class ClassificationResult:
    count: int
    loss: float
    top1: float  # fractions in [0, 1]
    top5: float | None  # None with fewer than five classes
    per_class: list[float]
    confusion: torch.Tensor  # rows: true class, columns: predicted
