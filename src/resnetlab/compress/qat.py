"""Quantization-aware training (``quantize --method qat``): a short fine-tune with INT8 rounding
simulated, for when post-training quantization loses too much.

- Batch norm is folded into the convolutions first (``inference.fold_batch_norm``); then PyTorch's
  FX ``prepare_qat_fx`` fake-quantizes every convolution's and the classifier's weights (one scale
  per output channel) and the activations, residual additions included. The fine-tune so trains the
  very weights and ranges that are deployed. The BN statistics stay frozen: PyTorch's QAT recipe
  freezes them for its last epochs, and a fine-tune of an epoch or two from trained weights is that
  last stretch.
- The training is the engine's: ``build_loaders`` (the data's train split, with its augmentation),
  SGD from ``build_optimizer``, a cosine ``LRSchedule`` and ``train_one_epoch``. Its loss is
  ``distillation_loss`` with the fp32 model as the teacher and no label term: the INT8 model learns
  to give the fp32 model's outputs, which is what quantization lost. On a few hundred images,
  cross-entropy on the labels instead over-fitted them: measured on the test suite's cifar_resnet20
  and 200 CIFAR-10 images, one epoch at lr 1e-3 changed a third of its 1,000 test predictions from
  fp32's and lost 3.6 points of top-1, where distillation kept 97% of them and the top-1.
- The file: for ``x86``, ``convert_fx`` swaps the fake quantization for PyTorch's INT8 kernels,
  saved as TorchScript. For ``onnxruntime`` and ``openvino`` the fake-quant graph itself is exported
  (``torch.onnx.export``, the legacy TorchScript exporter: torch.export cannot capture FX's
  fake-quant graph; moving QAT to torchao's PT2E is what lifts this): each fake quantization becomes a QuantizeLinear /
  DequantizeLinear pair holding the learned scale and zero point, which the runtime fuses into INT8
  kernels (ONNX Runtime: QLinearConv), and the weights are stored as INT8.
- Activations: ``x86`` keeps PyTorch's x86 QAT settings (7-bit activations, which its kernels need on
  CPUs without VNNI). ONNX gets all 8 bits, through the plain ``FakeQuantize``: the exporter has no
  converter for the fused observe-and-fake-quantize op the x86 settings use.
- Weights, ONNX: 8 bits for CPUs with VNNI, 7 (-64..63) for the others (``int8_target``), trained
  so: the file then computes on a CPU without VNNI what the fine-tune learned. The exporter takes
  only 8-bit ranges, so the weights' fake quantization is widened to 8 bits for the export alone,
  with the learned scales, and the stored integers are clipped to the range that was trained.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
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
from ..deploy.optimize import fold_batch_norm
from ..models import ResNet
from .int8_target import Int8Layout, int8_layout
from .quantize import check_backend, int8_backend, int8_metadata, quiet_quantization, save_onnx, save_x86

INT8_RANGE = (-128, 127)  # the only signed range the ONNX exporter converts


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
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    # Folding a bias-free convolution's BN makes a bias that does not require gradients: it is BN's
    # shift, and trains like every other parameter.
    folded = fold_batch_norm(model).requires_grad_(True).train()
    with quiet_quantization():
        return prepare_qat_fx(folded, _qconfig_mapping(backend, layout), (example,))


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
    with quiet_quantization():
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
    from torch.ao.quantization import disable_observer
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = copy.deepcopy(prepared).eval()
    prepared.apply(disable_observer)  # the ranges are final: exporting must not move them
    if backend == "x86":
        with quiet_quantization():
            save_x86(convert_fx(prepared), example, out, metadata)
        return out
    import onnx

    trained_range = _widen_weight_quantization(prepared)
    graph = onnx.load_from_string(_fake_quant_onnx_bytes(prepared, example))
    _store_int8_weights(graph, trained_range)
    _scalar_quantization_parameters(graph)
    save_onnx(graph, out, metadata)
    return out


def _fake_quant_onnx_bytes(prepared: torch.fx.GraphModule, example: torch.Tensor) -> bytes:
    """The fake-quant graph as ONNX, batch dynamic: each fake quantization a QuantizeLinear /
    DequantizeLinear pair with its learned scale and zero point."""
    import io

    buffer = io.BytesIO()
    with quiet_quantization():
        torch.onnx.export(prepared, (example,), buffer, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return buffer.getvalue()


def _qconfig_mapping(backend: str, layout: Int8Layout):
    from torch.ao.quantization import (FakeQuantize, MovingAverageMinMaxObserver, QConfig,
                                       default_per_channel_weight_fake_quant, get_default_qat_qconfig_mapping)

    mapping = get_default_qat_qconfig_mapping("x86")
    if backend == "x86":
        return mapping
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8)
    low, high = layout.weight_range
    weight = default_per_channel_weight_fake_quant.with_args(quant_min=low, quant_max=high)
    return mapping.set_global(QConfig(activation=activation, weight=weight))


def _widen_weight_quantization(prepared: torch.fx.GraphModule) -> tuple[int, int]:
    """Give every weight's fake quantization the int8 range the exporter takes, its scale unchanged;
    the range it was trained with, which the stored integers keep."""
    quantizers = [module.weight_fake_quant for module in prepared.modules() if hasattr(module, "weight_fake_quant")]
    trained = {(quantizer.quant_min, quantizer.quant_max) for quantizer in quantizers}
    if len(trained) != 1:
        raise ValueError(f"expected one weight range for the whole model, found {sorted(trained)}")
    for quantizer in quantizers:  # FakeQuantize's forward reads its observer's range
        quantizer.quant_min, quantizer.quant_max = INT8_RANGE
        quantizer.activation_post_process.quant_min, quantizer.activation_post_process.quant_max = INT8_RANGE
    return trained.pop()


def _store_int8_weights(graph, trained_range: tuple[int, int]) -> None:
    """Replace each QuantizeLinear of a constant (a weight) by the INT8 tensor it gives, clipped to
    ``trained_range``, so the file holds INT8 weights, as the post-training files do, instead of fp32
    ones quantized at every load."""
    from onnx import numpy_helper

    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.graph.initializer}
    for node in graph.graph.node:  # the exporter hands shared constants on through Identity nodes
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    folded = [node for node in graph.graph.node
              if node.op_type == "QuantizeLinear" and all(name in values for name in node.input)]
    for node in folded:
        weight, scale, zero_point = (values[name] for name in node.input)
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[axis] = -1
        # ONNX QuantizeLinear: saturate(round_half_to_even(x / scale) + zero_point)
        quantized = np.rint(weight / scale.reshape(shape)) + zero_point.reshape(shape)
        graph.graph.initializer.append(numpy_helper.from_array(
            np.clip(quantized, *trained_range).astype(zero_point.dtype), node.output[0]))
        graph.graph.node.remove(node)
    _drop_unused(graph)


def _scalar_quantization_parameters(graph) -> None:
    """Store each one-element scale and zero point of a QuantizeLinear / DequantizeLinear as a scalar.

    The exporter writes FakeQuantize's one-element tensors, and ONNX Runtime fuses a residual
    addition into INT8 (QLinearAdd) only when they are scalars, as the post-training graphs have
    them: with tensors, each addition ran in fp32 between a dequantization and a quantization.
    """
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    forwarded = {node.output[0]: node.input[0] for node in graph.graph.node
                 if node.op_type == "Identity" and node.input[0] in initializers}
    for node in graph.graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = forwarded.get(name, name)  # read the constant itself, not its copy
    _drop_unused(graph)  # the copies
    slots: dict[str, set] = {}
    for node in graph.graph.node:
        for index, name in enumerate(node.input):
            slots.setdefault(name, set()).add((node.op_type, index))
    for name, tensor in initializers.items():
        value = numpy_helper.to_array(tensor)
        read_as = slots.get(name, set())
        if value.shape == (1,) and read_as and all(op in ("QuantizeLinear", "DequantizeLinear") and index in (1, 2)
                                                   for op, index in read_as):
            tensor.CopyFrom(numpy_helper.from_array(value.reshape(()), name))


def _drop_unused(graph) -> None:
    """Remove the nodes and initializers nothing reads any more (the fp32 weights and their copies)."""
    while True:
        read = {name for node in graph.graph.node for name in node.input} | {o.name for o in graph.graph.output}
        dead = [node for node in graph.graph.node if not any(name in read for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.graph.node.remove(node)
    for tensor in [tensor for tensor in graph.graph.initializer if tensor.name not in read]:
        graph.graph.initializer.remove(tensor)
