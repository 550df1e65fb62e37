"""Evaluate a saved model on a labelled image folder (or CIFAR-10's test split)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..data.loaders import DataInfo, build_eval_loader
from ..deploy.files import load_deployed
from ..deploy.model import DeployedModel
from ..image_input import check_reads_image_files
from .distributed import Context
from .loop import evaluate
from .metrics import ClassificationResult
from .reports import write_confusion_matrix


@dataclass
class EvaluationReport:
    checkpoint: str
    source: str
    class_names: list[str]
    result: ClassificationResult
    confusion_csv: Path
    confusion_png: Path

    def as_dict(self) -> dict:
        result = self.result
        return {"checkpoint": self.checkpoint, "data": self.source, "images": result.count,
                "top1": result.top1, "top5": result.top5, "loss": result.loss,
                "per_class": dict(zip(self.class_names, result.per_class)),
                "confusion_csv": str(self.confusion_csv), "confusion_png": str(self.confusion_png)}


@dataclass(frozen=True)
class EvalSettings:
    """What ``resnetlab eval`` measures: ``checkpoint`` (.safetensors, .onnx, .pt2, .pt or a pretrained tag) on
    ``data``'s labelled split."""

    checkpoint: str | os.PathLike
    data: str  # an image folder (its val/ or test/ split, or class folders directly), or cifar10
    split: str | None = None  # the folder to evaluate on; None: val, else test
    batch_size: int = 128
    max_per_class: int | None = None  # the first N images of each class; None: all
    out: str | os.PathLike | None = None  # where confusion.csv/png go; None: beside the checkpoint
    device: str = "auto"


def evaluate_checkpoint(settings: EvalSettings) -> EvaluationReport:
    """Top-1/top-5/per-class accuracy of the settings' checkpoint on its data; writes the confusion matrix."""
    model = load_deployed(settings.checkpoint, settings.device)
    result, info = evaluate_model(model, settings.data, split=settings.split, batch_size=settings.batch_size,
                                  max_per_class=settings.max_per_class)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    out = Path(settings.out) if settings.out is not None else \
        Path(settings.checkpoint).parent / f"eval-{info.val_split}"
    csv_path, png_path = write_confusion_matrix(result.confusion, names, out)
    return EvaluationReport(checkpoint=str(settings.checkpoint), source=info.source, class_names=names,
                            result=result, confusion_csv=csv_path, confusion_png=png_path)


def evaluate_model(model: DeployedModel, data: str, *, split: str | None = None, batch_size: int = 128,
                   max_per_class: int | None = None) -> tuple[ClassificationResult, DataInfo]:
    """Accuracy of a loaded model of any format on ``data``'s labelled split."""
    check_reads_image_files(model.in_chans)
    config = DataConfig(data=data, val_split=split, batch_size=batch_size, max_per_class=max_per_class)
    loader, info = build_eval_loader(config, model.preprocessing, model.class_names)
    ctx = Context(rank=0, world_size=1, device=model.device)
    return evaluate(model, loader, model.num_classes, ctx, desc=f"eval {info.val_split}"), info
