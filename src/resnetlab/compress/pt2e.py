"""INT8 through torchao's PT2E (``torch.export`` graphs, quantized in place): the successor of PyTorch's
deprecated FX graph-mode quantization, used by ``quantize --backend x86`` and by ``--method qat``.

- ``capture``: the model as a ``torch.export`` graph with a free batch, for the quantizers to annotate.
- Two quantizers lay out what is quantized and how:
  - ``x86_quantizer``: torchao's ``X86InductorQuantizer``, whose patterns Inductor's INT8 kernels (oneDNN)
    fuse; 7-bit activations (``reduce_range``), as PyTorch's x86 settings have always had them, which no
    x86 CPU can clip. Its files are AOTInductor packages (``save_x86_package``).
  - ``OnnxQDQQuantizer``: the QDQ layout ONNX Runtime fuses into integer kernels (QLinearConv,
    QLinearAdd, QGemm), the one its own ``quantize_static`` writes: every convolution's and the
    classifier's input and weights quantized, a following ReLU taken with its convolution or residual
    addition, both inputs of each addition quantized; uint8 activations per tensor, int8 weights per
    output channel in ``weight_range`` (7 bits for CPUs without VNNI). torchao's own quantizers leave the
    residual additions in fp32 (x86) or live only in its tests (XNNPACK): measured on cifar_resnet20 and
    resnet18, the x86 layout ran 0.66x and 1.28x ONNX Runtime's fp32, this one 2.34x and 2.95x, equal to
    ``quantize_static``'s graphs.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch.fx import Node

from ..atomic import atomic_path
from ..deploy.export import export_inputs, save_aoti_package

# torchao registers an enum with torch's pytree on import, and torch logs that this is deprecated: torchao's
# to change, not the user's; the logger is put back as it was.
_pytree_log = logging.getLogger("torch.utils._pytree")
_level = _pytree_log.level
_pytree_log.setLevel(logging.ERROR)
from torchao.quantization.pt2e import (FakeQuantize, MovingAverageMinMaxObserver,  # noqa: E402
                                       MovingAveragePerChannelMinMaxObserver, allow_exported_model_train_eval,
                                       disable_observer, move_exported_model_to_eval)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e  # noqa: E402
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer  # noqa: E402
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (  # noqa: E402
    X86InductorQuantizer, get_default_x86_inductor_quantization_config)
_pytree_log.setLevel(_level)

AOTI_INT8_BATCH = 1  # x86 INT8 packages are compiled for it: a dynamic batch measured 0.75x its speed at batch 1
_CONVOLUTIONS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
_ADDITIONS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
_RELUS = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


def capture(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``model`` as an exported graph at ``example``'s image size, any batch. Strict: the non-strict capture
    keeps no record of which module a ReLU came from, and the x86 quantizer then takes a block's one ReLU
    module, called twice, for a single pattern with two outputs, and refuses it."""
    images, shapes = export_inputs(example, dynamic_batch=True)
    return torch.export.export(model, (images,), dynamic_shapes=shapes, strict=True).module()


def calibrated(model: torch.nn.Module, calibration: list[torch.Tensor], quantizer: Quantizer) -> torch.fx.GraphModule:
    """Post-training quantization: ``model`` captured, observed on the ``calibration`` batches, converted."""
    with torch.no_grad():
        prepared = prepare_pt2e(capture(model, calibration[0]), quantizer)
        for images in calibration:
            prepared(images)
    return convert(prepared)


def prepared_for_training(model: torch.nn.Module, example: torch.Tensor, quantizer: Quantizer) -> torch.fx.GraphModule:
    """``model`` captured with fake quantization where ``quantizer`` says; ``train()`` and ``eval()`` work on it
    as on a module (they switch what an exported graph can switch: dropout and batch norm)."""
    return allow_exported_model_train_eval(prepare_qat_pt2e(capture(model, example), quantizer))


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The INT8 graph of a calibrated or fine-tuned one (left as it is): its ranges fixed, each fake quantization a
    quantize/dequantize pair, weights stored as integers; in inference mode."""
    fixed = copy.deepcopy(prepared)
    fixed.apply(disable_observer)
    converted = move_exported_model_to_eval(convert_pt2e(move_exported_model_to_eval(fixed)))
    for module in converted.modules():  # the exporters read the flag that eval() cannot set on an exported graph
        module.training = False
    return converted


def x86_quantizer(is_qat: bool) -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=is_qat, reduce_range=True))


def onnx_qdq_quantizer(weight_range: tuple[int, int]) -> OnnxQDQQuantizer:
    """An ``OnnxQDQQuantizer`` for quantization-aware training (fake quantization) with weights in
    ``weight_range``."""
    activation = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                                  observer_or_fake_quant_ctr=FakeQuantize.with_args(
                                      observer=MovingAverageMinMaxObserver))
    low, high = weight_range
    weight = QuantizationSpec(dtype=torch.int8, quant_min=low, quant_max=high, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, observer_or_fake_quant_ctr=FakeQuantize.with_args(
                                  observer=MovingAveragePerChannelMinMaxObserver))
    return OnnxQDQQuantizer(activation, weight)


class OnnxQDQQuantizer(Quantizer):
    """Annotates a captured graph for ONNX Runtime's QDQ fusions (see the module's docstring)."""

    def __init__(self, activation, weight):
        super().__init__()
        self.activation, self.weight = activation, weight

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for node in model.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target in _CONVOLUTIONS:
                self._mark(node, {node.args[0]: self.activation, node.args[1]: self.weight})
            elif node.target in _ADDITIONS and all(isinstance(arg, Node) for arg in node.args[:2]):
                self._mark(node, {arg: self.activation for arg in node.args[:2]})
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        pass

    def _mark(self, node: Node, inputs: dict) -> None:
        """Quantize ``inputs`` of ``node`` and its output, or that of the ReLU after it, which runs fused."""
        users = list(node.users)
        relu = users[0] if len(users) == 1 and users[0].target in _RELUS else None
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, output_qspec=None if relu is not None else self.activation, _annotated=True)
        if relu is not None:
            relu.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=self.activation,
                                                                          _annotated=True)


def save_x86_package(converted: torch.fx.GraphModule, example: torch.Tensor, out: Path, metadata: dict) -> None:
    """The converted graph compiled by AOTInductor, with Inductor's INT8 fusions, into the package ``out``,
    at batch ``AOTI_INT8_BATCH`` (its files run any batch in chunks of it), with ``metadata`` inside."""
    import torchao.quantization.pt2e.inductor_passes.x86  # noqa: F401  (registers the INT8 fusions)

    images = example[:1].expand(AOTI_INT8_BATCH, *example.shape[1:]).contiguous()
    with torch.no_grad():
        program = torch.export.export(converted, (images,), strict=True)
    with atomic_path(out) as tmp:
        save_aoti_package(program, tmp, {**metadata, "batch": AOTI_INT8_BATCH})
