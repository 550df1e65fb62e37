"""The compression chain: prune, distill, quantize, export, each step re-measured the same way.

Every step starts from the previous step's file and writes its own under ``out/<n>-<step>/``, so
a failed step leaves the earlier ones usable. After each, the same record is taken: parameters,
MACs, file size and top-1 on the data's val/test split; at the end, every file's batch-1 CPU
latency, all timed side by side in the same rounds.
"""
from __future__ import annotations

import itertools
import json
import logging
import shutil
import statistics
import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..bench.measure import side_by_side
from ..complexity import count_macs
from ..config import DataConfig, DistillConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from ..data.loaders import build_loaders
from ..deploy.files import load_deployed
from ..engine.evaluation import evaluate_model
from ..errors import ConfigError, DataError
from ..deploy.export import export_model, read_export_metadata
from ..image_input import check_reads_image_files
from ..models import ResNet, load_model, save_weights
from ..pretrained.catalog import is_pretrained_tag
from .int8_target import check_int8_target, int8_layout, speed_note
from .prune import CHANNEL_MULTIPLE, check_budget, prunable, prune_model, recalibrate_batch_norm, width_options
from .quantize import (CALIB_IMAGES, RUNTIME_NAMES, calibration_batches, int8_backend, quantize_model,
                       write_fp32_reference)

logger = logging.getLogger("resnetlab")
STEPS = ("prune", "distill", "quantize", "export")  # the order they run in
# prune: training images the pruned network's BN statistics are re-estimated on (and the taylor
# criterion's loss measured on), in batches of this size
PRUNE_IMAGES, PRUNE_BATCH = 256, 32
LATENCY_ROUNDS, LATENCY_CALLS = 5, 10  # batch-1 latency: rounds of calls per file, all files in each round


@dataclass
class ChainSettings:
    """What the steps need beyond the checkpoint and the data; the command's flags."""

    target_macs: float = 0.5  # prune: fraction of the MACs to keep
    criterion: str = "l1"  # prune: how channels are ranked
    keep_stream: bool = True  # prune: inner channels only, the residual stream whole (False: both)
    channel_multiple: int = CHANNEL_MULTIPLE  # prune: every pruned width a multiple of this many channels
    student: str | None = None  # distill without prune: the architecture to train (with prune: the pruned net)
    epochs: int = 5  # training after pruning (0: none), or of the student
    lr: float = 0.01
    batch_size: int = 128
    precision: str = "auto"  # of the training after pruning / of the student; as train --precision
    alpha: float = 0.5  # distill: weight of the teacher's soft targets
    temperature: float = 4.0
    calib_images: int = CALIB_IMAGES  # quantize: real images from the data's train split
    int8_target: str = "auto"  # quantize: the CPUs the INT8 file is laid out for (int8_target.INT8_TARGETS)


TRAINING_STEPS = ("prune", "distill")  # prune fine-tunes what it pruned; distill trains the student
SETTING_USERS = {  # ChainSettings field: (its flag, the steps that read it)
    "target_macs": ("--target-macs", ("prune",)),
    "criterion": ("--criterion", ("prune",)),
    "keep_stream": ("--prune-stream", ("prune",)),
    "channel_multiple": ("--round-to", ("prune",)),
    "student": ("--student", ("distill",)),
    "epochs": ("--epochs", TRAINING_STEPS),
    "lr": ("--lr", TRAINING_STEPS),
    "batch_size": ("--batch-size", TRAINING_STEPS),
    "precision": ("--precision", TRAINING_STEPS),
    "alpha": ("--alpha", ("distill",)),
    "temperature": ("--temperature", ("distill",)),
    "calib_images": ("--calib-images", ("quantize",)),
    "int8_target": ("--int8-target", ("quantize",)),
}


@dataclass
class StepRecord:
    step: str
    path: str
    params: int | None  # None for an INT8 graph: its parameters are not PyTorch's
    macs: int
    megabytes: float
    latency_ms: float | None  # batch 1, CPU: filled in by time_records, all files side by side
    top1: float | None  # None when no data was given to measure it on


def check_steps(steps: list[str], settings: ChainSettings, given: Collection[str] | None = None) -> list[str]:
    """The steps in chain order, or a ConfigError before any work. ``given``: the settings the user set
    (the command line passes the flags it was given); None: those that differ from the defaults."""
    unknown = [step for step in steps if step not in STEPS]
    if unknown or not steps:
        raise ConfigError(f"unknown compression step(s) {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(STEPS)}, e.g. prune,distill,quantize,export")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"each step runs once: {','.join(steps)}")
    if "distill" in steps and "prune" not in steps and not settings.student:
        raise ConfigError("distill without prune needs --student NAME, the smaller architecture to train")
    if "prune" in steps and settings.student:
        raise ConfigError("--student is for distill without prune: with prune, the pruned network is the student")
    _check_settings_are_used(steps, settings, given)
    if "prune" in steps:
        check_budget(settings.target_macs, settings.channel_multiple)
    check_int8_target(settings.int8_target)
    if settings.epochs < 0 or (settings.epochs < 1 and "distill" in steps):
        raise ConfigError(f"training epochs must be at least 1 for distillation and 0 or more after pruning, "
                          f"not {settings.epochs}")
    return sorted(steps, key=STEPS.index)


def _check_settings_are_used(steps: list[str], settings: ChainSettings, given: Collection[str] | None) -> None:
    """Refuse a setting that none of ``steps`` reads: it would do nothing, silently. Prune without
    distill reads the training settings only when it fine-tunes (epochs > 0)."""
    if given is None:
        defaults = ChainSettings()
        given = [field for field in SETTING_USERS if getattr(settings, field) != getattr(defaults, field)]
    trains = "distill" in steps or ("prune" in steps and settings.epochs > 0)
    for field, (flag, users) in SETTING_USERS.items():
        if field not in given:
            continue
        if not set(users) & set(steps):
            step_names = " and ".join(users) + (" steps" if len(users) > 1 else " step")
            raise ConfigError(f"{flag} applies to the {step_names}, which --steps {','.join(steps)} leaves out")
        if users == TRAINING_STEPS and field != "epochs" and not trains:
            raise ConfigError(f"{flag} applies to training, and with 0 epochs the pruned network is not trained: "
                              "drop the flag, or train for 1 or more epochs")


def compress(checkpoint: str | Path, data: str, steps: list[str], out: str | Path,
             settings: ChainSettings = ChainSettings(), given: Collection[str] | None = None) -> list[StepRecord]:
    steps = check_steps(steps, settings, given)
    out, checkpoint = Path(out), Path(checkpoint)
    if (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a compression report; choose another --out")
    original = load_model(checkpoint).eval()
    if is_pretrained_tag(checkpoint):  # the chain's steps read and measure files: the tag's, as training writes them
        checkpoint = save_weights(original, out / "0-original" / "original.safetensors")
    check_reads_image_files(original.config.in_chans)  # every step measures top-1 on image files
    if "prune" in steps:
        prunable(original, settings.keep_stream)  # before the training images are read
    batches = _training_batches(original, data) if "prune" in steps else None  # before any long work
    macs = count_macs(original)  # changes only with the architecture: INT8 and export keep the arithmetic
    records = [measure_file("original", checkpoint, data, macs)]
    int8_runtime, fp32_on_runtime = None, None  # the quantized model in fp32 on its INT8 file's runtime
    current = checkpoint
    with tempfile.TemporaryDirectory() as scratch:  # the fp32 reference, timed and dropped
        for number, step in enumerate(steps, start=1):
            folder = out / f"{number}-{step}"
            if step == "prune":
                pruned = prune_model(original, settings.target_macs, settings.criterion, settings.keep_stream,
                                     batches if settings.criterion == "taylor" else None, settings.channel_multiple)
                recalibrate_batch_norm(pruned, [images for images, _ in batches])
                current, macs = save_weights(pruned, folder / "pruned.safetensors"), count_macs(pruned)
                records.append(measure_file("prune (before training)", current, data, macs))
                if "distill" in steps or settings.epochs == 0:
                    continue  # the distillation step trains the pruned network, with the original as teacher
                current = _train(current, data, folder / "finetune", settings, teacher=None)
            elif step == "distill":
                current = _train(current if "prune" in steps else None, data, folder, settings, teacher=checkpoint)
                macs = count_macs(load_model(current))
            elif step == "quantize":
                current, int8_runtime, fp32_on_runtime = _quantize(current, data, folder, Path(scratch), settings,
                                                                   macs)
            else:  # export: the chain's deployable file, checked against what it came from
                current = _export(current, folder)
            records.append(measure_file(step, current, data, macs))
        time_records(records + [fp32_on_runtime] if fp32_on_runtime else records)
    if fp32_on_runtime:
        int8 = next(record for record in records if record.step == "quantize")
        note = speed_note(int8.latency_ms, fp32_on_runtime.latency_ms, int8.megabytes, fp32_on_runtime.megabytes,
                          int8_runtime)
        if note:
            logger.info("%s", note)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps([asdict(record) for record in records], indent=2) + "\n")
    return records


def _quantize(current: Path, data: str, folder: Path, scratch: Path, settings: ChainSettings,
              macs: int) -> tuple[Path, str, StepRecord]:
    """``current``'s INT8 file for ``settings.int8_target``'s CPUs, on the fastest runtime for them; the
    runtime's name, and the record of the same model in fp32 on it (in ``scratch``), which INT8's
    speed is judged against."""
    model = load_model(current).eval()
    calibration = calibration_batches(model, _train_split(data), settings.calib_images)
    backend = int8_backend("auto", target=settings.int8_target)
    runtime = RUNTIME_NAMES[backend]
    logger.info("quantize: %s INT8 %s", runtime, int8_layout(backend, settings.int8_target).summary)
    int8 = quantize_model(model, calibration, folder / "model.int8.onnx", backend=backend,
                          target=settings.int8_target)
    reference = write_fp32_reference(model, backend, scratch)
    return int8, runtime, measure_file(f"fp32 ({runtime})", reference, None, macs)


def _train(start: Path | None, data: str, out: Path, settings: ChainSettings, teacher: Path | None) -> Path:
    """Fine-tune the pruned network (``start``), or train ``settings.student`` from scratch, with or
    without the teacher. The weights kept are the best epoch's on a val/ split, and the last epoch's
    when the data holds out only test/: picking an epoch by the test set would flatter the top-1
    the report then measures on that same test set."""
    from ..engine.trainer import BEST_WEIGHTS, LAST_WEIGHTS, train

    if start is not None:
        model = load_model(start)
        model_config = ModelConfig(name=model.arch, options=width_options(model.config), weights=str(start))
    else:
        model_config = ModelConfig(name=settings.student)
    config = TrainConfig(
        model=model_config, data=DataConfig(data=data, batch_size=settings.batch_size),
        optim=OptimConfig(lr=settings.lr), schedule=ScheduleConfig(name="cosine"),
        distill=DistillConfig(teacher=str(teacher) if teacher else None, alpha=settings.alpha,
                              temperature=settings.temperature),
        epochs=settings.epochs, precision=settings.precision, out=str(out))
    result = train(config)
    return out / (LAST_WEIGHTS if result.data.val_split == "test" else BEST_WEIGHTS)


def _training_batches(model: ResNet, data: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PRUNE_IMAGES training images of ``data`` with their labels, in batches of PRUNE_BATCH, prepared as
    for evaluation (no augmentation: the BN statistics measured on them are the ones inference will use)."""
    # Loaded one at a time and batched here: a loader of PRUNE_BATCH would refuse too few images with
    # advice to lower batch_size, which is not the user's to lower.
    config = DataConfig(data=data, batch_size=1, augment="none")
    try:
        loader, _, info = build_loaders(config, model.preprocessing)
    except DataError as error:
        raise DataError(f"prune measures the pruned network's BN statistics on training images: {error}") from error
    if info.num_train < PRUNE_BATCH:
        raise DataError(f"{info.source} needs at least {PRUNE_BATCH} training images for prune to measure the "
                        f"pruned network's BN statistics, and has {info.num_train}; add training images")
    used = min(PRUNE_IMAGES, info.num_train) // PRUNE_BATCH * PRUNE_BATCH
    images, labels = zip(*itertools.islice(loader, used))
    return [(torch.cat(images[start:start + PRUNE_BATCH]), torch.cat(labels[start:start + PRUNE_BATCH]))
            for start in range(0, used, PRUNE_BATCH)]


def _export(current: Path, folder: Path) -> Path:
    target = folder / "model.onnx"
    if current.suffix == ".onnx":  # already a graph (INT8), which its step's record ran: check it reads back whole
        read_export_metadata(current)
        with atomic_path(target) as tmp:
            shutil.copyfile(current, tmp)
        return target
    return export_model(load_model(current), target).path


def _train_split(data: str) -> Path:
    folder = Path(data) / "train"
    if not folder.is_dir():
        raise ConfigError(f"quantization calibrates on {folder}, which does not exist; the chain needs an "
                          "image folder with a train/ split")
    return folder


def measure_file(step: str, path: Path, data: str | None, macs: int) -> StepRecord:
    """The record of one model file: size and, given ``data``, top-1; ``time_records`` adds the latency."""
    deployed = load_deployed(path)
    return StepRecord(step=step, path=str(path), params=deployed.params, macs=macs,
                      megabytes=path.stat().st_size / 1e6, latency_ms=None,
                      top1=evaluate_model(deployed, data)[0].top1 if data is not None else None)


def time_records(records: list[StepRecord]) -> None:
    """Set every record's batch-1 CPU latency: the median over LATENCY_ROUNDS rounds, each timing
    every file in turn, LATENCY_CALLS calls apiece."""
    models = [load_deployed(Path(record.path)) for record in records]
    side = models[0].preprocessing.input_size
    example = torch.randn(1, models[0].in_chans, side, side)
    for record, rounds in zip(records, side_by_side(models, example, LATENCY_ROUNDS, LATENCY_CALLS)):
        record.latency_ms = statistics.median(rounds)
