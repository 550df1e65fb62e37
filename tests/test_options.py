"""The options users expect of create_model, and the errors they get for bad ones."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import DeformConv2d, StochasticDepth

from resnetlab import ConfigError, count_parameters, create_model
from resnetlab.models.blocks import ZeroPadShortcut


@pytest.mark.parametrize("in_chans", [1, 4, 13])
def test_in_chans_sets_the_stem_input(in_chans):
    model = create_model("resnet18", num_classes=5, in_chans=in_chans)
    assert model.conv1.in_channels == in_chans
    assert model(torch.randn(2, in_chans, 64, 64)).shape == (2, 5)


def test_stride_in_1x1_moves_the_stride_to_the_first_convolution():
    v15, v1 = create_model("resnet50"), create_model("resnet50", stride_in_1x1=True)
    assert (v15.layer2[0].conv1.stride, v15.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert (v1.layer2[0].conv1.stride, v1.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert count_parameters(v1) == count_parameters(v15)
    v1.load_state_dict(v15.state_dict())  # same weights, different computation
    images = torch.randn(1, 3, 64, 64)
    v1.eval(), v15.eval()
    assert v1(images).shape == v15(images).shape
    assert not torch.allclose(v1(images), v15(images))


def test_groups_and_width_per_group_give_resnext():
    built = create_model("resnet50", groups=32, width_per_group=4)
    assert count_parameters(built) == count_parameters(create_model("resnext50_32x4d"))
    assert built.layer1[0].conv2.groups == 32


def test_deformable_stages_start_as_the_plain_network():
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=3).eval()
    deformable = create_model("resnet18", num_classes=3, deformable=True).eval()
    assert not isinstance(deformable.layer1[0].conv1, DeformConv2d)
    for stage in (deformable.layer2, deformable.layer3, deformable.layer4):
        assert all(isinstance(block.conv1, DeformConv2d) and isinstance(block.conv2, DeformConv2d)
                   for block in stage)
    missing, unexpected = deformable.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".offset." in key for key in missing)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(deformable(images), plain(images), atol=1e-4)


def test_deformable_offsets_learn():
    model = create_model("cifar_resnet20", deformable=(3,))
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    offset = model.layer3[0].conv2.offset
    assert offset.weight.grad is not None and offset.weight.grad.abs().sum() > 0


def test_drop_path_rate_rises_linearly_and_only_acts_in_training():
    model = create_model("resnet18", drop_path_rate=0.3)
    blocks = [block for stage in model.stages for block in stage]
    assert blocks[0].drop_path is None  # the first block is never dropped
    assert isinstance(blocks[-1].drop_path, StochasticDepth) and blocks[-1].drop_path.p == pytest.approx(0.3)
    rates = [block.drop_path.p for block in blocks[1:]]
    assert rates == sorted(rates)
    images = torch.randn(8, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    first = model(images)
    assert not torch.allclose(first, model(images))
    model.eval()
    assert torch.equal(model(images), model(images))


def test_layers_channels_and_per_block_widths_are_builder_arguments():
    model = create_model("resnet50", layers=(1, 2, 1, 1), channels=(32, 64, 128, 256),
                         mid_channels=((20,), (40, 33), (100,), (200,)))
    assert [len(stage) for stage in model.stages] == [1, 2, 1, 1]
    assert model.layer2[1].conv2.out_channels == 33
    assert model.layer4[0].conv3.out_channels == 1024
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_cifar_shortcuts_zero_pad_without_parameters():
    model = create_model("cifar_resnet20")
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut, ZeroPadShortcut) and count_parameters(shortcut) == 0
    x = torch.randn(1, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and torch.all(out[:, 16:] == 0)


def test_num_classes_zero_returns_embeddings():
    model = create_model("resnet18", num_classes=0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)


@pytest.mark.parametrize("options, message", [
    ({"colour": "red"}, "unknown option(s) colour"),
    ({"groups": 32}, "basic blocks support only groups=1"),
    ({"deformable": (5,)}, "deformable stages [5] do not exist"),
    ({"drop_path_rate": 1.5}, "drop_path_rate must be in [0, 1)"),
    ({"layers": (2, 2)}, "must list the same number of stages"),
    ({"block": "fancy"}, "unknown block 'fancy'"),
    ({"mid_channels": ((64,),)}, "mid_channels needs one positive whole width per block"),
    ({"num_classes": "10"}, "num_classes must be an integer, not '10'"),
    ({"num_classes": -1}, "num_classes must be 0 or more (0 removes the classifier), not -1"),
    ({"in_chans": 0}, "in_chans must be at least 1, not 0"),
    ({"groups": 2.0}, "groups must be an integer, not 2.0"),
    ({"layers": 4}, "layers must be a list of integers, not 4"),
])
def test_bad_options_raise_a_clear_error(options, message):
    with pytest.raises(ConfigError) as error:
        create_model("resnet18", **options)
    assert message in str(error.value)


@pytest.mark.parametrize("name, options, message", [
    ("resnet18", {"attention": "cbam"}, "unknown attention 'cbam'; choose None, 'se' or 'eca'"),
    ("resnet18", {"aa": "gauss"}, "unknown aa 'gauss'; choose None, 'blur' or 'avg'"),
    ("resnet18", {"norm": "layer"}, "unknown norm 'layer'; choose one of batch, group"),
    ("resnet18", {"down_kernel_size": 5}, "down_kernel_size must be 1 or 3, not 5"),
    ("cifar_resnet20", {"aa": "blur"}, "the cifar stem has none"),
    ("resnet50", {"aa": "blur", "stride_in_1x1": True}, "cannot be combined with stride_in_1x1"),
    ("resnet50", {"norm": "group", "channels": (48, 128, 256, 512)}, "every width must be a multiple of 32"),
    ("resnet18", {"first_channels": ((32, 32),) * 4}, "first_channels needs one positive width per bottleneck"),
    ("resnext50_32x4d", {"block_reduce_first": 3}, "multiples of its 32 groups"),
    ("res2net50_26w_4s", {"aa": "blur"}, "res2net blocks have a 3x3 of their own"),
    ("resnest50d", {"attention": "se"}, "resnest blocks have split attention already"),
    ("res2net50_26w_4s", {"res2net_scale": 1}, "res2net_scale must be at least 2"),
    ("preact_resnet18", {"aa": "avg"}, "not available for pre-activation blocks"),
])
def test_bad_family_options_raise_a_clear_error(name, options, message):
    with pytest.raises(ConfigError) as error:
        create_model(name, **options)
    assert message in str(error.value)


def test_attention_is_refused_for_pre_activation_blocks():
    with pytest.raises(ConfigError, match="not available for pre-activation"):
        create_model("preact_resnet50", attention="se")


def test_unknown_model_suggests_the_closest_names():
    with pytest.raises(ConfigError, match="did you mean resnet50"):
        create_model("resnet51")
