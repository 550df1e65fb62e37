"""State dicts are interchangeable with torchvision and timm, and give the same outputs."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from resnetlab import count_parameters, create_model, list_models, load_weights
from resnetlab.models import alias_of
from zoo import LARGEST, LARGEST_PARAMS

TORCHVISION_NAMES = [name for name in list_models() if name in torchvision.models.list_models()]
# Every name of ours, aliases included, that timm also registers: the same network under the same name.
TIMM_NAMES = [name for name in list_models(aliases=True) if name in timm.list_models()]


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


def max_output_difference(reference: nn.Module, ours: nn.Module, size: int = 40,
                          dtype: torch.dtype = torch.float64) -> float:
    """Largest difference of the two models' outputs, relative to the outputs' size where above 1."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    reference, ours = reference.to(dtype).eval(), ours.to(dtype).eval()
    with torch.no_grad():
        expected = reference(images)
        return (expected - ours(images)).abs().max().item() / max(1.0, expected.abs().max().item())


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


def test_timm_names_cover_its_resnet_family_that_resnetlab_builds():
    # Grows as the family does; these are the ones the stem, shortcut and SE fields give.
    assert {"resnet10t", "resnet50d", "resnet152s", "resnext101_32x16d", "seresnext26t_32x4d",
            "seresnet50", "resnetv2_50"} <= set(TIMM_NAMES)
    assert alias_of("seresnet50") == "se_resnet50" and alias_of("resnet50d") is None


@pytest.mark.parametrize("timm_name", TIMM_NAMES)
def test_timm_parameter_count_and_key_shapes_are_ours(timm_name):
    with torch.device("meta"):
        reference = timm.create_model(timm_name)
        ours = create_model(timm_name)
    assert count_parameters(ours) == count_parameters(reference)
    assert (count_parameters(ours) > LARGEST_PARAMS) == (timm_name in LARGEST)  # the rest also run everywhere
    if not timm_name.startswith("resnetv2"):  # timm's pre-activation layout converts on loading
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("timm_name", ["resnetv2_18", "resnetv2_50", "seresnet50", "resnet50d"])
def test_a_timm_checkpoint_file_loads_through_load_weights_and_gives_the_same_outputs(timm_name, tmp_path):
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(timm_name))
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model(timm_name)
    report = load_weights(ours, path)
    assert report.layout == ("timm-resnetv2" if timm_name.startswith("resnetv2") else "torchvision")
    assert not report.head_reinitialized
    assert max_output_difference(reference, ours) < 1e-5


# torchvision's names are checked against torchvision above, in the same layout timm uses.
@pytest.mark.parametrize("timm_name", [name for name in TIMM_NAMES if name not in LARGEST | set(TORCHVISION_NAMES)])
def test_every_timm_state_dict_loads_strictly_and_gives_timms_outputs(timm_name):
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(timm_name))
    with torch.device("meta"):
        ours = create_model(timm_name)  # every value comes from timm's state dict: no init needed
    ours.to_empty(device="cpu")
    assert not load_weights(ours, reference.state_dict()).head_reinitialized
    # fp32 (fp64 copies of the largest take seconds each); same kernels in the same order.
    assert max_output_difference(reference, ours, dtype=torch.float32) < 1e-4
