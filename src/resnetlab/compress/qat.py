"""Quantization-aware training (``quantize --method qat``): a short fine-tune with INT8 rounding
simulated, for when post-training quantization loses too much.

- Batch norm is folded into the convolutions first (``deploy.optimize.fold_batch_norm``); then torchao's
  PT2E (``pt2e.prepared_for_training``: ``torch.export`` and ``prepare_qat_pt2e``) fake-quantizes every
  convolution's and the classifier's weights (one scale per output channel) and the activations, residual
  additions included. The fine-tune so trains the very weights and ranges that are deployed. The BN statistics stay frozen: PyTorch's QAT recipe
  freezes them for its last epochs, and a fine-tune of an epoch or two from trained weights is that
  last stretch.
- The training is the engine's: ``build_loaders`` (the data's train split, with its augmentation),
  SGD from ``build_optimizer``, a cosine ``LRSchedule`` and ``train_one_epoch``. Its loss is
  ``distillation_loss`` with the fp32 model as the teacher and no label term: the INT8 model learns
  to give the fp32 model's outputs, which is what quantization lost. On a few hundred images,
  cross-entropy on the labels instead over-fitted them: measured on the test suite's cifar_resnet20
  and 200 CIFAR-10 images, one epoch at lr 1e-3 changed a third of its 1,000 test predictions from
  fp32's and lost 3.6 points of top-1, where distillation kept 97% of them and the top-1.
- The file: ``convert_pt2e`` turns each fake quantization into a quantize/dequantize pair holding the
  learned scale and zero point, and the weights into integers. For ``x86`` that graph is compiled by
  AOTInductor with Inductor's INT8 fusions into a ``.pt2`` package; for ``onnxruntime`` and ``openvino`` it
  is exported by the torch.export-based ONNX exporter as QuantizeLinear / DequantizeLinear pairs, which the
  runtime fuses into INT8 kernels (ONNX Runtime: QLinearConv, QLinearAdd), with the weights stored as INT8.
- The layout: ``x86`` takes torchao's ``X86InductorQuantizer`` (7-bit activations, right on every x86
  CPU); ONNX takes ``pt2e.OnnxQDQQuantizer``, ONNX Runtime's own QDQ layout: 8-bit activations, weights in
  8 bits for CPUs with VNNI and 7 (-64..63) for the others (``int8_target``), trained in that range, so the
  file computes on a CPU without VNNI what the fine-tune learned.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..config import DataConfig, OptimConfig
from ..data.loaders import build_loaders
from ..engine.distill import distillation_loss
from ..engine.distributed import Context
from ..engine.loop import LossFn, StepSettings, train_one_epoch
from ..engine.optim import build_optimizer
from ..engine.schedules import LRSchedule
from ..errors import ConfigError, DataError
from ..image_input import check_reads_image_files
from ..deploy.export import onnx_bytes
from ..deploy.optimize import fold_batch_norm
from ..models import ResNet
from .int8_target import Int8Layout, int8_layout
from .quantize import check_backend, int8_backend, int8_metadata, save_onnx


def quantization_aware_training(model: ResNet, data: str, out: str | Path, backend: str = "auto",
                                epochs: int = 1, lr: float = 1e-3, batch_size: int = 64,
                                target: str = "auto") -> Path:
    """Fine-tune ``model`` with fake quantization on ``data``'s train split; write its INT8 file ``out``
    laid out for ``target``'s CPUs (``int8_target``), for ``backend`` ("auto": ``int8_backend``'s choice)."""
    out = Path(out)
    backend = int8_backend(backend, target=target)
    check_backend(backend, out, model)
    layout = int8_layout(backend, target)
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"QAT needs at least 1 epoch and a batch of at least 1, not {epochs} and {batch_size}")
    optim = OptimConfig(lr=lr)  # the recipe's SGD; validates lr
    check_reads_image_files(model.config.in_chans)
    train_loader, _, info = build_loaders(DataConfig(data=data, batch_size=batch_size), model.preprocessing)
    if (model.class_names and list(info.class_names) != list(model.class_names)) \
            or info.num_classes != model.config.num_classes:
        raise DataError(f"{data} has the classes {', '.join(info.class_names)}; the model was trained on "
                        f"{', '.join(model.class_names or map(str, range(model.config.num_classes)))}. "
                        "QAT fine-tunes on the model's own classes")
    example = torch.randn(1, model.config.in_chans, model.preprocessing.input_size, model.preprocessing.input_size)
    prepared = prepare_qat(model, backend, layout, example)
    finetune(prepared, train_loader, epochs, optim, fp32_distillation(model))
    metadata = int8_metadata(model, backend, layout, qat={"epochs": epochs, "lr": lr, "batch_size": batch_size,
                                                   "images": info.num_train})
    return save_qat_model(prepared, example, out, backend, metadata)


def prepare_qat(model: ResNet, backend: str, layout: Int8Layout, example: torch.Tensor) -> torch.fx.GraphModule:
    """A training copy of ``model``, BN folded, with fake quantization laid out as ``layout``."""
    from .pt2e import onnx_qdq_quantizer, prepared_for_training, x86_quantizer

    # Folding a bias-free convolution's BN makes a bias that does not require gradients: it is BN's
    # shift, and trains like every other parameter.
    folded = fold_batch_norm(model).requires_grad_(True).train()
    quantizer = x86_quantizer(is_qat=True) if backend == "x86" else onnx_qdq_quantizer(layout.weight_range)
    return prepared_for_training(folded, example, quantizer)


def fp32_distillation(model: ResNet) -> LossFn:
    """The loss that pulls the fake-quant model's outputs to ``model``'s own (KL at temperature 1)."""
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    return distillation_loss(teacher, alpha=1.0, temperature=1.0)


def finetune(prepared: torch.fx.GraphModule, loader, epochs: int, optim: OptimConfig,
             compute_loss: LossFn) -> list[float]:
    """Train the fake-quant model in place; each epoch's mean training loss."""
    ctx = Context(rank=0, world_size=1, device=torch.device("cpu"))
    optimizer = build_optimizer(prepared, optim.name, optim.lr, optim.momentum, optim.nesterov,
                                optim.weight_decay, optim.backbone_lr_scale)
    total_steps = epochs * len(loader)
    schedule = LRSchedule("cosine", total_steps=total_steps)
    settings = StepSettings(base_lr=optim.lr, accumulate=1, grad_clip=0.0, autocast_dtype=None,
                            channels_last=False, max_steps=total_steps)
    losses, step = [], 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(prepared, loader, optimizer, schedule, compute_loss, settings, ctx,
                                step=step, epoch=epoch)
        losses.append(stats.loss)
        step = stats.step
    prepared.eval()
    return losses


def save_qat_model(prepared: torch.fx.GraphModule, example: torch.Tensor, out: Path, backend: str,
                   metadata: dict) -> Path:
    """The fine-tuned fake-quant model as ``backend``'s INT8 file, its scales as learned."""
    from .pt2e import convert, save_x86_package

    converted = convert(prepared)
    if backend == "x86":
        save_x86_package(converted, example, out, metadata)
        return out
    import onnx

    save_onnx(onnx.load_from_string(onnx_bytes(converted, example)), out, metadata)
    return out
