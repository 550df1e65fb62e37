"""State dicts are interchangeable with torchvision and timm, and give the same outputs."""
from __future__ import annotations

import functools

import pytest
import timm
import torch
import torchvision
from timm.models._registry import _model_to_module
from torch import nn

from resnetlab import count_parameters, create_model, list_models, load_weights
from resnetlab.models import HRNET_MODELS, alias_of, model_config
from resnetlab.models.blocks import BlurPool, EfficientChannelAttention
from resnetlab.models.layouts import to_resnetlab_layout
from resnetlab.models.norms import EvoNormS0, FilterResponseNorm, StandardizedConv2d, norm_layer
from zoo import LARGEST, LARGEST_PARAMS

TORCHVISION_NAMES = [name for name in list_models() if name in torchvision.models.list_models()]
# Every name of ours, aliases included, that timm also registers: the same network under the same name.
# HRNet's are checked against timm in tests/test_hrnet.py (timm's own HRNet cannot run at 40 px).
TIMM_NAMES = [name for name in list_models(aliases=True) if name in timm.list_models() and name not in HRNET_MODELS]


AFFINE_NORMS = (nn.BatchNorm2d, nn.GroupNorm, timm.layers.EvoNorm2dS0, timm.layers.FilterResponseNormTlu2d,
                EvoNormS0, FilterResponseNorm)


def randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BN is an identity in eval mode, which would hide a misplaced norm: make every BN (and the
    affine parameters of the other norms, EvoNorm's v and FRN's tau) count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AFFINE_NORMS):
                n = module.weight.numel()
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                for extra in ("v", "tau"):  # EvoNorm's sigmoid scale, FRN's threshold
                    if getattr(module, extra, None) is not None:
                        getattr(module, extra).copy_(torch.rand(n, generator=generator) * 0.5 + 0.2)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def comparison_size(name: str) -> int:
    """Small, but where every stage's input stays even: timm's 2x2 average-pool anti-aliasing floors an
    odd map while its ResNet-D shortcut rounds up, so timm itself cannot run those at 40."""
    return 64 if model_config(name).aa == "avg" else 40


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


TIMM_FAMILY_MODULES = ("resnet", "resnetv2", "res2net", "resnest", "sknet", "hrnet")


def test_every_architecture_of_timms_resnet_family_is_registered_under_its_name():
    family = {name for name in timm.list_models() if _model_to_module.get(name) in TIMM_FAMILY_MODULES}
    assert len(family) >= 134  # timm 1.0.31's: 81 + 20 + 9 + 8 + 5 + 11
    assert family <= set(list_models(aliases=True))
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
    assert max_output_difference(reference, ours, size=comparison_size(timm_name), dtype=torch.float32) < 1e-4


@pytest.mark.parametrize("timm_name, indices", [("resnet50d", None), ("resnetv2_50", None), ("resnetrs50", [0, 2, -1]),
                                                ("resnetblur18", 2)])
@pytest.mark.parametrize("norm, stop_early", [(False, False), (True, True)])
def test_forward_intermediates_equal_timms(timm_name, indices, norm, stop_early):
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(timm_name)).eval()
    ours = create_model(timm_name).eval()
    load_weights(ours, reference.state_dict())
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected_final, expected = reference.forward_intermediates(images, indices, norm=norm, stop_early=stop_early)
        final, intermediates = ours.forward_intermediates(images, indices, norm=norm, stop_early=stop_early)
    assert len(intermediates) == len(expected)
    for ours_map, timm_map in zip([final, *intermediates], [expected_final, *expected]):
        torch.testing.assert_close(ours_map, timm_map, rtol=1e-5, atol=1e-5)


# One of each stem, shortcut and stride placement that dilation changes: plain and deep stems, ResNet-D's
# average-pool shortcut, SENet's 3x3 shortcut and narrower first conv, blur and average-pool anti-aliasing.
DILATED = [("resnet18", {}), ("resnet26d", {}), ("resnet26", dict(down_kernel_size=3, block_reduce_first=2)),
           ("resnetblur18", {}), ("resnetaa34d", {}), ("resnetv2_18", {})]


@pytest.mark.parametrize("timm_name, options, output_stride", [(name, options, 8) for name, options in DILATED]
                         + [("resnet26d", {}, 16)])
def test_a_dilated_model_loads_the_undilated_checkpoint_and_gives_timms_dilated_outputs(timm_name, options,
                                                                                        output_stride):
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(timm_name, output_stride=output_stride, **options))
    with torch.device("meta"):  # every value comes from timm's state dict
        ours = create_model(timm_name, output_stride=output_stride, **options)
        undilated = create_model(timm_name, **options)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in undilated.state_dict().items()}
    ours.to_empty(device="cpu")
    assert not load_weights(ours, reference.state_dict()).head_reinitialized
    assert [info["reduction"] for info in ours.feature_info][-1] == output_stride
    assert max_output_difference(reference, ours, size=64, dtype=torch.float32) < 1e-5


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 7), (8, 11), (33, 16)])
def test_blur_pool_is_timms_at_any_size(stride, size):
    images = torch.randn(2, 5, *size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(BlurPool(5, stride)(images), timm.layers.BlurPool2d(5, stride=stride)(images))


@pytest.mark.parametrize("channels", [16, 64, 256, 1000, 2048])
def test_eca_kernel_and_output_are_timms(channels):
    ours, reference = EfficientChannelAttention(channels), timm.layers.EcaModule(channels)
    assert ours.conv.weight.shape == reference.conv.weight.shape
    ours.load_state_dict(reference.state_dict(), strict=True)
    features = torch.randn(2, channels, 5, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(features), reference(features))


@pytest.mark.parametrize("norm, reference", [("evonorm_s0", timm.layers.EvoNorm2dS0),
                                             ("frn", timm.layers.FilterResponseNormTlu2d)])
def test_self_activating_norms_are_timms(norm, reference):
    theirs = randomise_batch_norm(reference(64))
    ours = norm_layer(norm, 64)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    features = torch.randn(2, 64, 5, 7, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(ours(features), theirs(features))


def test_a_standardised_conv_is_timms_and_its_filters_have_zero_mean_and_unit_variance():
    torch.manual_seed(0)
    theirs = timm.layers.StdConv2d(16, 32, 3, stride=2, eps=1e-8)
    theirs.weight.data.mul_(5).add_(1)  # far from standardised already
    ours = StandardizedConv2d(16, 32, 3, stride=2, padding=1, bias=False)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    images = torch.randn(2, 16, 9, 12)
    torch.testing.assert_close(ours(images), theirs(images), rtol=1e-4, atol=1e-4)
    filters = ours.standardized_weight().flatten(1)
    torch.testing.assert_close(filters.mean(1), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(filters.var(1, correction=0), torch.ones(32), atol=1e-4, rtol=0)


def test_bits_stem_pool_pads_with_zeros_which_a_pre_activation_stem_needs():
    torch.manual_seed(0)
    # timm's BiT (its resnetv2_*_bit builder) one block a stage: a fixed-padding stem, eps-1e-8 standardised convs.
    reference = randomise_batch_norm(timm.models.resnetv2.ResNetV2(
        layers=[1, 1, 1, 1], stem_type="fixed", conv_layer=functools.partial(timm.layers.StdConv2d, eps=1e-8))).eval()
    ours = create_model("resnetv2_50x1_bit", layers=(1, 1, 1, 1)).eval()
    unpadded = create_model("resnetv2_50x1_bit", layers=(1, 1, 1, 1), stem_pool_zero_padding=False).eval()
    for model in (ours, unpadded):
        load_weights(model, reference.state_dict())
    assert max_output_difference(reference, ours, dtype=torch.float32) < 1e-4
    assert max_output_difference(reference, unpadded, dtype=torch.float32) > 1e-3


@pytest.mark.parametrize("name, conv", [("resnetv2_50d", "downsample.1"), ("resnetv2_50", "downsample.0")])
def test_timms_pre_activation_shortcut_conv_goes_where_the_model_has_it(name, conv):
    with torch.device("meta"):
        reference, ours = timm.create_model(name), create_model(name)
    converted, layout = to_resnetlab_layout(reference.state_dict(), target_keys=ours.state_dict().keys())
    assert layout == "timm-resnetv2" and f"layer2.0.{conv}.weight" in converted
    assert converted.keys() == ours.state_dict().keys()
