"""``optimize``: folded batch norm and every backend give the eager model's answers."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from resnetlab import create_model, list_models, load_model
from resnetlab.data.datasets import decode_files
from resnetlab.data.folders import scan_split
from resnetlab.errors import ConfigError
from resnetlab.image_input import normalize
from resnetlab.deploy.optimize import CPU_PREFERENCE, backend_available, fold_batch_norm, optimize
from resnetlab.models.norms import StandardizedConv2d
from zoo import shallow_narrow

CPU = torch.device("cpu")
EXPORTING_BACKENDS = ("compile", "onnxruntime", "openvino")


def with_learnt_statistics(model: nn.Module) -> nn.Module:
    """BN running statistics and affine parameters away from their identity defaults, as after training."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) * 0.5 + 0.75)
            # Zero-initialised last BNs of residual branches stay zero, so that the 1202-layer nets
            # keep finite outputs; their mean, variance and bias still have to fold.
            module.weight.data.mul_(torch.rand(size, generator=generator) * 0.5 + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    # Deep nets reach large logits; 1e-3 is the bar on logits of order one.
    assert (actual - expected).abs().max().item() < 1e-3 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("name", list_models())
def test_folded_model_equals_the_eager_model(name):
    torch.manual_seed(0)
    model = with_learnt_statistics(create_model(name, num_classes=10, zero_init_residual=True,
                                                **shallow_narrow(name)))
    images = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        expected = model(images)
    folded = fold_batch_norm(model)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if model.config.block.startswith("preact") and batch_norms:
        assert 0 < left < batch_norms  # only pre-activations stay
    else:  # every BN, or none to fold (GroupNorm, EvoNorm and FRN stay as they are)
        assert left == 0
    assert not any(isinstance(m, StandardizedConv2d) for m in folded.modules())  # BiT's filters computed once
    assert_same_logits(optimize(model, "eager", input_size=(32, 40))(images), expected)


@pytest.mark.parametrize("backend", EXPORTING_BACKENDS)
def test_each_backend_matches_eager_at_any_batch_size(backend):
    if not backend_available(backend, CPU):
        pytest.fail(f"{backend} is in the dev extras and should be installed")
    torch.manual_seed(0)
    model = with_learnt_statistics(create_model("resnet18", num_classes=10))
    optimized = optimize(model, backend, input_size=(64, 64))
    assert optimized.backend == backend
    for batch in (1, 7):  # traced at batch 1: the batch dimension must stay dynamic
        images = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            assert_same_logits(optimized(images), model(images))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graph_backends_refuse_another_image_size_in_one_line(backend):
    # OpenVINO, unchecked, handed back the previous call's logits for images of another size.
    optimized = optimize(create_model("cifar_resnet20").eval(), backend)
    assert optimized(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    with pytest.raises(ConfigError, match="graph takes batches of 3x32x32 images .*, not 3x64x64"):
        optimized(torch.randn(2, 3, 64, 64))
    with pytest.raises(ConfigError, match=r"takes a 4-D batch of images, not a 3-D tensor of shape \(3, 32, 32\)"):
        optimized(torch.randn(3, 32, 32))


@pytest.fixture(scope="module")
def cifar_test_images(cifar10_root):
    split = scan_split(cifar10_root / "test", 30)
    images, _, _ = decode_files(split.files, (32, 32))
    return images, torch.tensor(split.labels)


@pytest.mark.parametrize("backend, precision, agreement", [
    ("eager", "fp32", 1.0), ("compile", "fp32", 1.0), ("onnxruntime", "fp32", 1.0), ("openvino", "fp32", 1.0),
    ("eager", "bf16", 0.95), ("openvino", "bf16", 0.95),
])
def test_top1_on_real_images_agrees_with_eager(cifar_classifier, cifar_test_images, backend, precision, agreement):
    model = load_model(cifar_classifier).eval()
    images = normalize(cifar_test_images[0], model.preprocessing)
    with torch.no_grad():
        expected = model(images).argmax(1)
    predicted = optimize(model, backend, precision)(images).argmax(1)
    assert (predicted == expected).float().mean().item() >= agreement
    # The trained model is far above chance on these 300 images; the optimized one is too.
    assert (predicted == cifar_test_images[1]).float().mean().item() > 0.25


def test_auto_takes_the_first_installed_backend_of_the_measured_order(monkeypatch):
    model = create_model("cifar_resnet20")
    assert optimize(model).backend == next(b for b in CPU_PREFERENCE if backend_available(b, CPU))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "openvino" else real_find_spec(name, *args))
    assert optimize(model).backend == "onnxruntime"


def test_bad_requests_are_one_sentence_errors(monkeypatch):
    model = create_model("cifar_resnet20")
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'; choose one of auto, eager"):
        optimize(model, "tensorrt")
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        optimize(model, precision="int4")
    with pytest.raises(ConfigError, match="onnxruntime runs fp32"):
        optimize(model, "onnxruntime", "bf16")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "openvino" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match="backend 'openvino' is not installed; pip install openvino"):
        optimize(model, "openvino")


def test_deformable_models_fold_around_their_deformable_convolutions():
    torch.manual_seed(0)
    model = with_learnt_statistics(create_model("resnet18", num_classes=10, deformable=True))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
    folded_bns = sum(isinstance(m, nn.BatchNorm2d) for m in fold_batch_norm(model).modules())
    assert 0 < folded_bns < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # only theirs stay
    for backend in ("eager", "openvino", "onnxruntime"):  # ONNX: DeformConv, from opset 19
        assert_same_logits(optimize(model, backend, input_size=(64, 64))(images), expected)


def test_the_package_offers_optimize_and_train_at_the_top():
    import resnetlab
    from resnetlab.engine.trainer import train

    assert resnetlab.optimize is optimize and resnetlab.train is train
    with pytest.raises(AttributeError, match="no attribute 'optimise'"):
        resnetlab.optimise
