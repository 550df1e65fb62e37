"""Knowledge distillation: the loss that lets a trained teacher guide a student through ``train_one_epoch``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..errors import ConfigError
from ..models import load_model
from .loop import LossFn


def load_teacher(config: DistillConfig, class_names: tuple[str, ...], device: torch.device,
                 channels_last: bool) -> nn.Module:
    """The teacher, frozen in eval mode; it must know the student's classes, in the same order."""
    teacher = load_model(config.teacher)
    if teacher.class_names is not None and list(teacher.class_names) != list(class_names):
        raise ConfigError(f"the teacher {config.teacher} was trained on classes {teacher.class_names}, the data "
                          f"has {list(class_names)}: distillation needs the same classes in the same order")
    if teacher.class_names is None and teacher.config.num_classes != len(class_names):
        raise ConfigError(f"the teacher {config.teacher} has {teacher.config.num_classes} outputs for "
                          f"{len(class_names)} classes")
    teacher.requires_grad_(False)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return teacher.eval().to(device, memory_format=memory_format)


def distillation_loss(teacher: nn.Module, alpha: float, temperature: float,
                      label_smoothing: float = 0.0) -> LossFn:
    """alpha x T^2 x KL(teacher || student at temperature T) + (1 - alpha) x cross-entropy on the labels.

    T^2 keeps the soft term's gradients on the scale of the hard term's as T changes (Hinton et al.).
    Labels may be soft (mixup/cutmix); the teacher sees the same mixed images.
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def compute_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
        logits = model(images)
        with torch.no_grad():
            teacher_logits = teacher(images)
        soft = F.kl_div(F.log_softmax(logits.float() / temperature, dim=1),
                        F.log_softmax(teacher_logits.float() / temperature, dim=1),
                        reduction="batchmean", log_target=True) * temperature ** 2
        return alpha * soft + (1 - alpha) * criterion(logits, targets), logits

    return compute_loss
