"""Every registered architecture builds, runs, trains and has exactly the published size."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from resnetlab import ConfigError, count_parameters, create_model, list_models
from resnetlab.models.resnet import ResNet
from zoo import shallow_narrow

# torchvision's and timm's published counts, to the parameter.
EXACT_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
    # timm resnetv2_18 ... resnetv2_152 (pre-activation) and seresnet50/101/152
    "preact_resnet18": 11_687_720, "preact_resnet34": 21_795_880, "preact_resnet50": 25_549_352,
    "preact_resnet101": 44_541_480, "preact_resnet152": 60_185_128,
    "se_resnet50": 28_088_024, "se_resnet101": 49_326_872, "se_resnet152": 66_821_848,
}
# The papers' figures in millions, as printed (He et al. CVPR 2016 Table 6; ECCV 2016 Table 3).
# The ECCV paper's 10.2M for ResNet-1001 leaves out BN's 0.15M parameters: the original Torch
# code has exactly our layers (10.33M in all), and its ResNet-164 figure is 1.7M either way.
PAPER_PARAMS_MILLIONS = {
    "cifar_resnet20": "0.27", "cifar_resnet32": "0.46", "cifar_resnet44": "0.66",
    "cifar_resnet56": "0.85", "cifar_resnet110": "1.7", "cifar_resnet1202": "19.4",
    "cifar_preact_resnet164": "1.7", "cifar_preact_resnet1001": "10.2",
}
PAPER_COUNTS_WITHOUT_BN = {"cifar_preact_resnet1001"}


def meta_model(name: str, **options) -> ResNet:
    with torch.device("meta"):
        return create_model(name, **options)


def test_registry_lists_the_whole_family():
    names = set(list_models())
    # timm's names are counted against timm itself, live (tests/test_reference_equivalence.py).
    assert names == set(EXACT_PARAMS) | set(PAPER_PARAMS_MILLIONS) | (names & set(timm.list_models()))
    assert list_models("cifar_resnet*") == ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
                                            "cifar_resnet56", "cifar_resnet110", "cifar_resnet1202"]


@pytest.mark.parametrize("name", [*EXACT_PARAMS, *PAPER_PARAMS_MILLIONS])
def test_parameter_count_matches_the_reference(name):
    model = meta_model(name)
    params = count_parameters(model)
    if name in EXACT_PARAMS:
        assert params == EXACT_PARAMS[name]
        return
    if name in PAPER_COUNTS_WITHOUT_BN:
        params -= sum(count_parameters(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    printed = PAPER_PARAMS_MILLIONS[name]
    decimals = len(printed.split(".")[1])
    # Equal at the paper's printed precision: within half a unit of its last digit.
    assert abs(params / 1e6 - float(printed)) <= 0.5 * 10 ** -decimals


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **shallow_narrow(name))
    size = model.preprocessing.input_size if name.startswith("cifar") else 48
    images = torch.randn(2, 3, size, size)
    logits = model(images)
    assert logits.shape == (2, 7)
    logits.logsumexp(dim=1).mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


def test_cifar_nets_default_to_ten_classes_and_imagenet_nets_to_a_thousand():
    assert meta_model("cifar_resnet20").fc.out_features == 10
    assert meta_model("resnet50").fc.out_features == 1000


def test_he_initialisation_and_identity_batch_norm():
    torch.manual_seed(0)
    model = create_model("resnet50")
    conv = model.layer3[0].conv2  # 256 x 256 x 3 x 3: enough weights for a tight estimate
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@pytest.mark.parametrize("name, last", [("resnet18", "bn2"), ("resnet50", "bn3"),
                                        ("preact_resnet50", "conv3"), ("cifar_resnet20", "bn2")])
def test_zero_init_residual_makes_every_block_start_as_identity(name, last):
    model = create_model(name, zero_init_residual=True)
    for stage in model.stages:
        for block in stage:
            assert torch.all(getattr(block, last).weight == 0)
    # An identity block passes its (post-ReLU, non-negative) input through unchanged.
    model.eval()
    block = model.stages[0][1]
    x = torch.rand(1, block.conv1.in_channels, 8, 8)
    assert torch.allclose(block(x), x)


def test_resnet_d_shortcuts_average_pool_then_project_at_stride_one():
    model = create_model("resnet50d").eval()
    first, second = model.layer1[0].downsample, model.layer2[0].downsample
    assert isinstance(first[0], nn.Identity) and isinstance(second[0], nn.AvgPool2d)  # layer1 keeps the size
    assert second[1].stride == (1, 1) and second[1].kernel_size == (1, 1)
    x = torch.randn(1, 256, 9, 9)  # an odd side: the pool's ceil mode keeps the conv path's 5x5
    with torch.no_grad():
        assert model.layer2[0](x).shape == second(x).shape == (1, 512, 5, 5)
        # The pool averages what it covers, edges included (count_include_pad=False).
        assert torch.allclose(second[0](torch.ones(1, 1, 3, 3)), torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("name, widths", [("resnet50c", [32, 32, 64]), ("resnet50s", [64, 64, 128]),
                                          ("resnet50t", [24, 32, 64])])
def test_deep_stems_are_three_3x3_convs_halving_the_side_once(name, widths):
    model = create_model(name)
    convs = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths and {c.kernel_size for c in convs} == {(3, 3)}
    assert [c.stride[0] for c in convs] == [2, 1, 1]
    assert model.forward_stem(torch.randn(1, 3, 64, 64)).shape == (1, widths[-1], 16, 16)
    assert model.feature_info[0]["reduction"] == 2


@pytest.mark.parametrize("options, message", [
    (dict(stem_type="deeper"), "unknown stem_type 'deeper'; choose one of plain, deep, deep_tiered"),
    (dict(stem_type="deep", stem="cifar"), "the cifar stem has none"),
    (dict(stem_type="deep", stem_width=2), "stem_width must be at least 4"),
])
def test_wrong_stem_options_are_one_sentence_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        create_model("resnet18", **options)


@pytest.mark.parametrize("name, options, message", [
    ("resnet18", dict(stage_blocks=("basic", "bottleneck")), "stage_blocks needs one of basic or bottleneck for each "
                                                             "of the 4 stages"),
    ("resnet18", dict(stage_blocks=("basic", "basic", "preact_basic", "basic")), "stage_blocks needs one of basic"),
    ("resnet18", dict(stage_blocks=("basic",) * 4, groups=2), "basic blocks support only groups=1"),
    ("resnet50", dict(norm="evonorm_s0"), "norm 'evonorm_s0' and weight_standardization are for pre-activation"),
    ("resnet50", dict(weight_standardization=True), "bottleneck blocks are post-activation"),
    ("resnetv2_50d_evos", dict(stem_width=24), "norm 'evonorm_s0' splits channels into 32 groups"),
    ("cifar_preact_resnet164", dict(stem_pool_zero_padding=True), "the cifar stem has none"),
    ("resnetv2_50x1_bit", dict(replace_stem_pool=True), "stem_pool_zero_padding pads the stem's max-pool"),
])
def test_wrong_block_and_norm_options_are_one_sentence_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, **options)


def test_test_resnet_runs_a_bottleneck_stage_between_basic_ones():
    model = create_model("test_resnet")
    assert [type(stage[0]).__name__ for stage in model.stages] == ["BasicBlock", "BasicBlock", "Bottleneck",
                                                                      "BasicBlock"]
    assert [info["num_chs"] for info in model.feature_info] == [32, 32, 48, 192, 96]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
