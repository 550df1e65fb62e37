"""``train(config)``: one run from config to best weights, readable top to bottom."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..hardware import has_native_bf16
from ..config import ModelConfig, TrainConfig, config_to_dict
from ..data.loaders import DataInfo, build_loaders, preprocessing_at_input_size
from ..errors import ConfigError
from ..image_input import check_reads_image_files
from ..models import ResNet, create_model, load_weights, model_config, save_weights
from . import distributed
from .distill import distillation_loss, load_teacher
from .distributed import Context
from .logbook import Logbook, write_config, write_manifest
from .loop import (EpochStats, StepSettings, TrainingDiverged, cross_entropy_loss, evaluate,
                   train_one_epoch)
from .metrics import ClassificationResult
from .optim import build_optimizer
from .schedules import LRSchedule
from .state import load_training_state, restore_rng_state, rng_state, save_training_state

logger = logging.getLogger("resnetlab")

LAST_STATE = "last.pt"  # everything needed to resume
BEST_WEIGHTS = "best.safetensors"  # the best validation top-1 so far, with its metadata
LAST_WEIGHTS = "last.safetensors"


@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    best_epoch: int
    final_top1: float
    epochs_run: int  # in this process's lifetime (fewer than planned after a resume)
    data: DataInfo


def train(config: TrainConfig) -> RunResult:
    """Train ``config.model`` on ``config.data``; one process, or each rank under torchrun."""
    ctx = distributed.setup(config.device)
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _run(config, ctx)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])  # as the caller had it
        distributed.teardown()


def _run(config: TrainConfig, ctx: Context) -> RunResult:
    run_dir = Path(config.out)
    global_batch = config.data.batch_size * ctx.world_size * config.optim.accumulate
    resumed = _resumable_state(run_dir, config.resume, global_batch)
    _seed_everything(config.seed + ctx.rank, config.deterministic)
    model, teacher, train_loader, val_loader, data = _model_and_data(config, ctx)
    parts = _training_parts(config, model, len(train_loader) // config.optim.accumulate, ctx)
    progress = _restore(resumed, model, parts, config, ctx, run_dir) if resumed is not None else _Progress()
    trained = _wrapped(model, config.model.compile, ctx)  # what the steps call; the state is model's
    evaluated = parts.ema.module if parts.ema is not None else model  # EMA weights are the ones kept
    logbook = None
    if ctx.is_main:
        logbook = _open_logbook(run_dir, config, data, progress.start_epoch)
        logger.info("%s: %s parameters, %d epochs of %d steps, global batch %d, on %s%s",
                    config.model.name, f"{sum(p.numel() for p in model.parameters()):,}", config.epochs,
                    parts.steps_per_epoch, global_batch,
                    ctx.device, f" x {ctx.world_size} processes" if ctx.world_size > 1 else "")

    settings = StepSettings(base_lr=config.optim.lr, accumulate=config.optim.accumulate,
                            grad_clip=config.optim.grad_clip, autocast_dtype=parts.autocast_dtype,
                            channels_last=config.model.channels_last, max_steps=parts.total_steps)
    compute_loss = cross_entropy_loss(config.optim.label_smoothing) if teacher is None else \
        distillation_loss(teacher, config.distill.alpha, config.distill.temperature, config.optim.label_smoothing)
    epochs_run, val = 0, None
    for epoch in range(progress.start_epoch, config.epochs):
        if progress.step >= parts.total_steps:
            break
        train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(trained, train_loader, parts.optimizer, parts.schedule, compute_loss, settings, ctx,
                                step=progress.step, epoch=epoch, scaler=parts.scaler, ema=parts.ema)
        progress.step = stats.step
        val = _validate(evaluated, val_loader, data, ctx, config, parts, epoch, stats)
        parts.schedule.observe(val.top1)
        epochs_run += 1
        improved = val.top1 > progress.best_top1
        if improved:
            progress.best_top1, progress.best_epoch = val.top1, epoch
        if ctx.is_main:
            _save_epoch(run_dir, epoch, model, evaluated, parts, progress, global_batch, improved, logbook, stats, val)
            _log_epoch(epoch, config.epochs, data.val_split, stats, val)

    if ctx.is_main:
        logbook.draw_curves()
        logbook.close()
        bad = f"; {len(data.bad_files)} bad image(s) skipped" if data.bad_files else ""
        logger.info("best %s top-1 %.2f%% after epoch %d: %s%s", data.val_split, 100 * progress.best_top1,
                    progress.best_epoch + 1, run_dir / BEST_WEIGHTS, bad)
    return RunResult(run_dir=run_dir, best_top1=progress.best_top1, best_epoch=progress.best_epoch,
                     final_top1=val.top1 if val else progress.best_top1, epochs_run=epochs_run, data=data)


@dataclass
class _Progress:
    """Where the run is: what a resume continues from."""

    start_epoch: int = 0
    step: int = 0  # optimizer steps taken
    best_top1: float = -1.0
    best_epoch: int = -1


@dataclass
class _TrainingParts:
    """What updates the weights, fixed by the config; the checkpoint keeps the state of each."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None  # fp16 only
    ema: AveragedModel | None
    autocast_dtype: torch.dtype | None
    steps_per_epoch: int
    total_steps: int


def _resumable_state(run_dir: Path, resume: bool, global_batch: int) -> dict | None:
    """The checkpoint to continue from (``--resume``), or None for a new run in a folder that holds none."""
    resumed = load_training_state(run_dir / LAST_STATE) if resume else None
    if resumed is None and (run_dir / LAST_STATE).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume, or choose another --out")
    if resumed is not None and resumed.get("global_batch", global_batch) != global_batch:
        # Its step count and lr schedule are in steps of that batch: another one would cut the run short.
        raise ConfigError(f"{run_dir} trained with a global batch of {resumed['global_batch']} images a step, and "
                          f"this resume has {global_batch}: keep --batch-size x processes x --accumulate at "
                          f"{resumed['global_batch']}")
    return resumed


def _model_and_data(config: TrainConfig, ctx: Context):
    """The network (with its class names and preprocessing), the teacher if distilling, and the loaders."""
    architecture = model_config(config.model.name, **config.model.options)
    check_reads_image_files(architecture.in_chans)  # training reads image folders or CIFAR-10
    preprocessing = preprocessing_at_input_size(architecture.preprocessing, config.data.input_size)
    train_loader, val_loader, data = build_loaders(config.data, preprocessing, seed=config.seed,
                                                   rank=ctx.rank, world_size=ctx.world_size)
    model = build_model(config.model, data.num_classes, ctx)
    model.class_names = list(data.class_names)
    # Saved with the weights: evaluate, predict, export and serve then run at the size it trained at.
    model.preprocessing = preprocessing
    teacher = load_teacher(config.distill, data.class_names, ctx.device, config.model.channels_last) \
        if config.distill.teacher else None
    return model, teacher, train_loader, val_loader, data


def _training_parts(config: TrainConfig, model: ResNet, steps_per_epoch: int, ctx: Context) -> _TrainingParts:
    optim = config.optim
    optimizer = build_optimizer(model, optim.name, optim.lr, optim.momentum, optim.nesterov,
                                optim.weight_decay, optim.backbone_lr_scale)
    total_steps = min(config.epochs * steps_per_epoch, config.max_steps or float("inf"))
    autocast_dtype = resolve_precision(config.precision, ctx.device)
    if config.precision == "auto" and ctx.device.type == "cpu" and ctx.is_main and has_native_bf16():
        logger.info("this CPU has native bf16 (AVX-512 BF16 or AMX): --precision bf16 trains about twice as "
                    "fast as the fp32 that auto keeps on CPUs (BENCHMARKS.md)")
    return _TrainingParts(
        optimizer=optimizer, schedule=build_schedule(config, steps_per_epoch, total_steps),
        scaler=torch.amp.GradScaler(ctx.device.type) if autocast_dtype == torch.float16 else None,
        ema=AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(optim.ema_decay), use_buffers=True)
        if optim.ema_decay else None,
        autocast_dtype=autocast_dtype, steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def _restore(resumed: dict, model: ResNet, parts: _TrainingParts, config: TrainConfig, ctx: Context,
             run_dir: Path) -> _Progress:
    """The weights, optimizer, schedule, scaler, EMA and RNGs as the checkpoint left them; where to go on."""
    model.load_state_dict(resumed["model"])
    parts.optimizer.load_state_dict(resumed["optimizer"])
    if parts.scaler is not None:
        parts.scaler.load_state_dict(resumed["scaler"])
    if parts.ema is not None:
        parts.ema.load_state_dict(resumed["ema"])
    parts.schedule.plateau.__dict__.update(resumed["plateau"])
    restore_rng_state(resumed["rng"])
    progress = _Progress(start_epoch=resumed["epoch"] + 1, step=resumed["step"], best_top1=resumed["best_top1"],
                         best_epoch=resumed["best_epoch"])
    if ctx.is_main:
        logger.info("resuming %s after epoch %d (step %d)", run_dir, progress.start_epoch, progress.step)
        if config.max_steps is not None and progress.step >= config.max_steps:
            logger.info("the run has already made its %d steps; give --max-steps N (more than %d) to train "
                        "it further", config.max_steps, progress.step)
        elif progress.start_epoch >= config.epochs:
            logger.info("the run has already finished its %d epochs; give --epochs N (more than %d) to train "
                        "it further", progress.start_epoch, progress.start_epoch)
    return progress


def _wrapped(model: ResNet, compile: bool, ctx: Context) -> nn.Module:
    trained = model
    if ctx.world_size > 1:
        trained = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return torch.compile(trained) if compile else trained


def _open_logbook(run_dir: Path, config: TrainConfig, data: DataInfo, start_epoch: int) -> Logbook:
    """The run folder with its config and manifest, and the metrics of the epochs kept (all before a resume's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = config_to_dict(config)
    write_config(run_dir, config_dict)
    write_manifest(run_dir, config_dict, config.seed, _data_record(data))
    logbook = Logbook(run_dir)
    logbook.keep_epochs_before(start_epoch)
    return logbook


def _validate(evaluated: nn.Module, val_loader, data: DataInfo, ctx: Context, config: TrainConfig,
              parts: _TrainingParts, epoch: int, stats: EpochStats) -> ClassificationResult:
    distributed.broadcast_buffers(evaluated)
    try:
        return evaluate(evaluated, val_loader, data.num_classes, ctx, autocast_dtype=parts.autocast_dtype,
                        channels_last=config.model.channels_last, desc=f"epoch {epoch + 1} {data.val_split}")
    except TrainingDiverged as error:
        raise TrainingDiverged(f"{error} by step {stats.step} (lr {stats.lr:.4g}); the last good checkpoint is "
                               "kept. Lower the lr, add warmup, or set a gradient clip (--grad-clip)") from error


def _save_epoch(run_dir: Path, epoch: int, model: ResNet, evaluated: nn.Module, parts: _TrainingParts,
                progress: _Progress, global_batch: int, improved: bool, logbook: Logbook, stats: EpochStats,
                val: ClassificationResult) -> None:
    save_weights(evaluated, run_dir / LAST_WEIGHTS)
    if improved:
        save_weights(evaluated, run_dir / BEST_WEIGHTS)
    # The epoch's line before the state that marks it done: a kill between the two reruns the
    # epoch, and the logbook drops the repeated line on resume; the other order could lose it.
    logbook.record({
        "epoch": epoch, "step": progress.step, "lr": stats.lr, "train_loss": stats.loss, "train_top1": stats.top1,
        "val_loss": val.loss, "val_top1": val.top1, "val_top5": val.top5,
        "images_per_second": stats.images_per_second, "seconds": stats.seconds,
    })
    save_training_state(run_dir / LAST_STATE, {
        "model": model.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler else None,
        "ema": parts.ema.state_dict() if parts.ema else None,
        "plateau": dict(parts.schedule.plateau.__dict__), "epoch": epoch, "step": progress.step,
        "global_batch": global_batch, "best_top1": progress.best_top1, "best_epoch": progress.best_epoch,
        "rng": rng_state(),
    })


def _log_epoch(epoch: int, epochs: int, val_split: str, stats: EpochStats, val: ClassificationResult) -> None:
    top5 = f", top-5 {100 * val.top5:.2f}%" if val.top5 is not None else ""
    logger.info("epoch %d/%d: train loss %.4f, %s loss %.4f, top-1 %.2f%%%s, lr %.4g, %.0f img/s",
                epoch + 1, epochs, stats.loss, val_split, val.loss, 100 * val.top1, top5, stats.lr,
                stats.images_per_second)


def build_model(config: ModelConfig, num_classes: int, ctx: Context) -> ResNet:
    """The network with its starting weights, frozen parts, memory layout and device."""
    model = create_model(config.name, num_classes=num_classes, **config.options)
    if config.weights:
        load_weights(model, config.weights)  # a new class count re-initialises the head
    model.freeze(config.frozen_stages, config.freeze_bn)
    model.set_grad_checkpointing(config.grad_checkpointing)
    if config.sync_bn and ctx.world_size > 1:
        if ctx.device.type == "cpu":
            raise ConfigError("sync_bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPU processes; "
                              "leave it off (each process normalises over its own batch)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return model.to(ctx.device, memory_format=memory_format)


def build_schedule(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> LRSchedule:
    schedule = config.schedule
    per_unit = steps_per_epoch if schedule.unit == "epoch" else 1
    return LRSchedule(schedule.name, total_steps=total_steps, warmup_steps=round(schedule.warmup * per_unit),
                      milestones=tuple(round(m * per_unit) for m in schedule.milestones), gamma=schedule.gamma,
                      min_factor=schedule.min_lr_ratio, patience=schedule.patience)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto``: bf16 on GPUs that have it, fp32 on CPUs.

    bf16 autocast on a CPU without native bf16 (AVX-512 BF16 or AMX) is slower than fp32.
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 mixed precision needs a CUDA GPU; on CPU use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def _data_record(data: DataInfo) -> dict:
    return {"source": data.source, "classes": list(data.class_names), "train_images": data.num_train,
            "val_images": data.num_val, "val_split": data.val_split, "file_list_sha256": data.file_list_hash,
            "bad_files": [str(bad.path) for bad in data.bad_files]}
