"""State dicts are interchangeable with torchvision and timm, and give the same outputs."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from resnetlab import count_parameters, create_model, list_models, load_weights

TORCHVISION_NAMES = [name for name in list_models() if name in torchvision.models.list_models()]
# timm name -> ours: pre-activation nets convert from timm's resnetv2 layout, SE nets share ours.
TIMM_NAMES = {
    "resnetv2_18": "preact_resnet18", "resnetv2_34": "preact_resnet34", "resnetv2_50": "preact_resnet50",
    "resnetv2_101": "preact_resnet101", "resnetv2_152": "preact_resnet152",
    "seresnet50": "se_resnet50", "seresnet101": "se_resnet101", "seresnet152": "se_resnet152",
}


def randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BN is an identity in eval mode, which would hide a misplaced norm: make every BN count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def max_output_difference(reference: nn.Module, ours: nn.Module, size: int = 40) -> float:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference, ours = reference.double().eval(), ours.double().eval()
    with torch.no_grad():
        return (reference(images) - ours(images)).abs().max().item()


def test_every_torchvision_resnet_is_in_the_registry():
    wanted = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
              "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"}
    assert set(TORCHVISION_NAMES) == wanted


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_outputs(name):
    torch.manual_seed(0)
    reference = randomise_batch_norm(torchvision.models.get_model(name, weights=None))
    ours = create_model(name)
    reference_state = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference_state.items()}
    ours.load_state_dict(reference_state, strict=True)
    assert max_output_difference(reference, ours) < 1e-5


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_our_state_dict_loads_into_torchvision(name):
    torch.manual_seed(0)
    ours = randomise_batch_norm(create_model(name))
    reference = torchvision.models.get_model(name, weights=None)
    reference.load_state_dict(ours.state_dict(), strict=True)
    assert max_output_difference(reference, ours) < 1e-5


@pytest.mark.parametrize("timm_name", TIMM_NAMES)
def test_timm_parameter_count_is_ours(timm_name):
    with torch.device("meta"):
        reference = timm.create_model(timm_name)
        ours = create_model(TIMM_NAMES[timm_name])
    assert count_parameters(ours) == count_parameters(reference)


@pytest.mark.parametrize("timm_name", ["resnetv2_18", "resnetv2_50", "seresnet50"])
def test_timm_weights_load_through_load_weights_and_give_the_same_outputs(timm_name, tmp_path):
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(timm_name))
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model(TIMM_NAMES[timm_name])
    report = load_weights(ours, path)
    assert report.layout == ("timm-resnetv2" if timm_name.startswith("resnetv2") else "torchvision")
    assert not report.head_reinitialized
    assert max_output_difference(reference, ours) < 1e-5
