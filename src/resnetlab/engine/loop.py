"""The training loop as plain functions: ``train_one_epoch`` and ``evaluate``.

Quantization-aware training and distillation reuse them with their own ``compute_loss``.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ..errors import ResnetlabError
from .distributed import Context, sum_over_processes
from .metrics import ClassificationMeter, ClassificationResult
from .optim import set_learning_rate
from .schedules import LRSchedule

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
CHECK_EVERY = 20  # steps between host syncs to check the loss and refresh the progress bar


class TrainingDiverged(ResnetlabError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class StepSettings:
    """How each optimizer step is taken; fixed for the run."""

    base_lr: float
    accumulate: int  # batches per optimizer step
    grad_clip: float  # max global gradient norm; 0: off
    autocast_dtype: torch.dtype | None  # bf16/fp16 mixed precision; None: fp32
    channels_last: bool
    max_steps: int  # stop after this many optimizer steps in all


@dataclass
class EpochStats:
    loss: float
    top1: float | None  # on the training batches as augmented; None with mixup/cutmix soft targets
    images: int
    seconds: float
    lr: float
    step: int  # optimizer steps done after this epoch

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def progress_disabled(ctx: Context) -> bool | None:
    """Rank 0 shows progress bars; None lets tqdm hide them when stderr is not a terminal (logs, CI)."""
    return None if ctx.is_main else True


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def compute_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
        logits = model(images)
        return criterion(logits, targets), logits

    return compute_loss


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(images: torch.Tensor, targets: torch.Tensor, ctx: Context, channels_last: bool):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
    return images, targets.to(ctx.device, non_blocking=True)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                    compute_loss: LossFn, settings: StepSettings, ctx: Context, *, step: int, epoch: int,
                    scaler: torch.amp.GradScaler | None = None, ema: AveragedModel | None = None) -> EpochStats:
    """One pass over ``loader``; ``step`` counts optimizer steps done before it (for the schedule)."""
    model.train()
    start = time.perf_counter()
    losses: list[torch.Tensor] = []  # on the device; checked every CHECK_EVERY steps, not every step
    checked = 0
    loss_sum, images_seen, correct, hard_labels = 0.0, 0, 0, True
    lr = set_learning_rate(optimizer, settings.base_lr, schedule(step))
    progress = tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", disable=progress_disabled(ctx),
                    leave=False, dynamic_ncols=True)
    for batch_index, (images, targets) in enumerate(progress):
        images, targets = to_device(images, targets, ctx, settings.channels_last)
        last_of_step = (batch_index + 1) % settings.accumulate == 0
        # DDP all-reduces gradients on every backward; only the last batch of a step needs it.
        sync = contextlib.nullcontext() if last_of_step or not isinstance(model, DistributedDataParallel) \
            else model.no_sync()
        with sync:
            with autocast(ctx.device, settings.autocast_dtype):
                loss, logits = compute_loss(model, images, targets)
            scaled = loss / settings.accumulate
            (scaler.scale(scaled) if scaler else scaled).backward()
        losses.append(loss.detach().float())
        images_seen += len(images)
        if targets.ndim == 1:
            correct += (logits.detach().argmax(1) == targets).sum()
        else:
            hard_labels = False
        if not last_of_step:
            continue
        _optimizer_step(model, optimizer, settings.grad_clip, scaler)
        if ema is not None:
            ema.update_parameters(model.module if isinstance(model, DistributedDataParallel) else model)
        step += 1
        if len(losses) >= CHECK_EVERY or step >= settings.max_steps:
            loss_sum += _check_finite(losses, first_step=step - len(losses) // settings.accumulate,
                                      lr=lr, accumulate=settings.accumulate)
            checked += len(losses)
            losses = []
            elapsed = time.perf_counter() - start
            progress.set_postfix(loss=f"{loss_sum / checked:.3f}", lr=f"{lr:.3g}",
                                 img_s=f"{images_seen * ctx.world_size / elapsed:.0f}")
        if step >= settings.max_steps:
            break
        lr = set_learning_rate(optimizer, settings.base_lr, schedule(step))
    if losses:
        loss_sum += _check_finite(losses, first_step=step - len(losses) // settings.accumulate, lr=lr,
                                  accumulate=settings.accumulate)
        checked += len(losses)
    progress.close()
    totals = sum_over_processes(torch.tensor([loss_sum, float(checked), float(correct), float(images_seen)],
                                             dtype=torch.float64, device=ctx.device))
    loss_total, batches, correct_total, images_total = totals.tolist()
    return EpochStats(loss=loss_total / max(batches, 1),
                      top1=correct_total / max(images_total, 1) if hard_labels else None,
                      images=int(images_total), seconds=time.perf_counter() - start, lr=lr, step=step)


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                    scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_finite(losses: list[torch.Tensor], first_step: int, lr: float, accumulate: int) -> float:
    values = torch.stack(losses).cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        index = bad[0].item()
        raise TrainingDiverged(
            f"the loss became {values[index].item()} at step {first_step + index // accumulate + 1} "
            f"(lr {lr:.4g}); the last good checkpoint is kept. Lower the lr, add warmup, "
            "or set a gradient clip (--grad-clip)")
    return values.sum().item()


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, ctx: Context, *,
             autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
             desc: str = "eval") -> ClassificationResult:
    """Top-1, top-5, per-class accuracy and the confusion matrix over all processes' shards."""
    model.eval()
    meter = ClassificationMeter(num_classes)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for images, labels in tqdm(loader, desc=desc, unit="batch", disable=progress_disabled(ctx), leave=False,
                               dynamic_ncols=True):
        images, labels = to_device(images, labels, ctx, channels_last)
        with autocast(ctx.device, autocast_dtype):
            logits = model(images)
        meter.update(logits, labels, loss_sum=criterion(logits.float(), labels).item())
    meter.sum_over_processes(ctx.device)
    result = meter.result()
    if not math.isfinite(result.loss):
        raise TrainingDiverged("the evaluation loss is not finite: the model's weights have diverged")
    return result
