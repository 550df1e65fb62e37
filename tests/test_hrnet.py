"""HRNet under timm's eleven names: timm's parameters, state dicts and outputs, and the face of a ResNet."""
from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab import (ConfigError, HRNet, ResNetConfig, count_macs, count_parameters, create_model, list_models,
                       load_model, load_weights, save_weights, stage_table)
from resnetlab.backbones import HRNetFeatures, fpn
from resnetlab.cli import main
from resnetlab.compress.prune import prunable
from resnetlab.engine.optim import parameter_groups
from resnetlab.models import HRNET_MODELS
from resnetlab.models.weights import config_from_metadata
from test_reference_equivalence import randomise_batch_norm
from zoo import narrow

NAMES = list(HRNET_MODELS)
# Every structure among the eleven: stage 1 of 1, 2 and 4 bottlenecks, 1-1-1, 1-3-2 and 1-4-3 modules, head convs
# with and without bias. w30 to w64 (and w48_ssld) differ from these in their widths alone, which the key shapes
# check; running them too took 16 s more on one core (each gave exactly timm's outputs).
AGAINST_TIMM = ["hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w18_ssld"]


@functools.cache
def meta_pair(name: str) -> tuple[nn.Module, HRNet]:
    """timm's model and ours, shapes only."""
    with torch.device("meta"):
        return timm.create_model(name), create_model(name)


def relative_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    return (expected - actual).abs().max().item() / max(1.0, expected.abs().max().item())


def test_the_registry_has_timms_eleven_hrnets():
    assert set(NAMES) == set(timm.list_models("hrnet*")) and set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_timms(name):
    reference, ours = meta_pair(name)
    assert isinstance(ours, HRNet) and ours.arch == name
    assert count_parameters(ours) == count_parameters(reference)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_are_timms(name):
    reference, ours = meta_pair(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("name", AGAINST_TIMM)
def test_timms_state_dict_loads_through_load_weights_and_gives_timms_outputs(name):
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(name)).eval()
    with torch.device("meta"):
        ours = create_model(name)  # every value comes from timm's state dict: no init needed
    ours.to_empty(device="cpu")
    report = load_weights(ours, reference.state_dict())
    assert report.layout == "timm-hrnet" and not report.head_reinitialized and not report.messages
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(images), ours.eval()(images)
    assert relative_difference(expected, actual) < 1e-4
    with torch.no_grad():  # the pieces add up to the whole, as timm's do
        features = ours.forward_features(images)
        assert torch.equal(features, reference.forward_features(images))
        assert torch.equal(ours.forward_head(features), actual)
        assert ours.forward_head(features, pre_logits=True).shape == (2, ours.num_features)


def test_a_timm_state_dict_with_other_classes_loads_with_a_fresh_classifier():
    reference = timm.create_model("hrnet_w18_small")
    ours = create_model("hrnet_w18_small", num_classes=10)
    report = load_weights(ours, reference.state_dict())
    assert report.head_reinitialized and ours.classifier.out_features == 10
    assert torch.equal(ours.final_layer[0].weight, reference.final_layer[0].weight)


def test_every_parameter_gets_a_gradient_at_sides_that_do_not_halve_evenly():
    torch.manual_seed(0)
    model = create_model("hrnet_w18_small_v2", num_classes=7, **narrow("hrnet_w18_small_v2"))
    # 52x76 makes branches of 13x19, 7x10, 4x5 and 2x3: each upsampling must meet its target's odd size.
    logits = model(torch.randn(2, 3, 52, 76))
    assert logits.shape == (2, 7)
    logits.logsumexp(dim=1).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_gradient_checkpointing_gives_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = create_model("hrnet_w18_small_v2", num_classes=5, **narrow("hrnet_w18_small_v2")).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    images = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        model(images).square().mean().backward()
    for (name, param), other in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(param.grad, other.grad, rtol=1e-4, atol=1e-6), name
    # Recomputed blocks do not step their BN statistics a second time.
    for (name, buffer), other in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.allclose(buffer.float(), other.float(), rtol=1e-5, atol=1e-7), name


def test_save_weights_and_load_model_give_the_same_network_and_outputs(tmp_path):
    torch.manual_seed(0)
    model = randomise_batch_norm(create_model("hrnet_w18_ssld", num_classes=3)).eval()
    path = save_weights(model, tmp_path / "hrnet.safetensors", class_names=["ant", "bee", "wasp"])
    loaded = load_model(path).eval()
    assert isinstance(loaded, HRNet) and loaded.arch == "hrnet_w18_ssld" and loaded.config == model.config
    assert loaded.class_names == ["ant", "bee", "wasp"] and loaded.preprocessing == model.preprocessing
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_metadata_written_before_hrnet_still_reads_as_a_resnet():
    assert config_from_metadata({"config": ResNetConfig(layers=(1, 1, 1, 1)).to_dict()}, "old.safetensors") == \
        ResNetConfig(layers=(1, 1, 1, 1))


def test_freezing_stops_the_stem_and_first_stages_and_keeps_their_statistics():
    model = create_model("hrnet_w18_small")
    model.freeze(stages=2)
    model.train()
    frozen = ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition1.", "stage2.")
    for name, param in model.named_parameters():
        assert param.requires_grad is not name.startswith(frozen), name
    assert not model.bn2.training and not model.stage2[0].branches[1][0].bn1.training
    assert model.stage3[0].branches[0][0].bn1.training and model.incre_modules[0][0].bn1.training
    with pytest.raises(ConfigError, match="cannot freeze 5 stages: hrnet_w18_small has 4"):
        model.freeze(stages=5)


def test_reset_classifier_and_zero_classes_give_embeddings():
    model = create_model("hrnet_w18_small", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_features)
    model.reset_classifier(4)
    assert model.config.num_classes == 4 and model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_feature_info_names_real_modules_with_their_widths_and_strides():
    model = create_model("hrnet_w18_small").eval()
    modules = dict(model.named_modules())
    captured = []
    for info in model.feature_info:
        modules[info["module"]].register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert [(f.shape[1], 64 // f.shape[2], 96 // f.shape[3]) for f in captured] == \
        [(info["num_chs"], info["reduction"], info["reduction"]) for info in model.feature_info]


def test_stage_table_owns_every_parameter_and_counts_every_multiply_add():
    model = create_model("hrnet_w18_small").eval()
    rows = stage_table(model, 64)
    assert [row.name for row in rows] == ["stem", "layer1", "stage2", "stage3", "stage4", "head"]
    assert sum(row.params for row in rows) == count_parameters(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))  # torch counts every convolution and matmul: 2 FLOPs a MAC
    assert 2 * count_macs(meta_pair("hrnet_w18_small")[1], 64) == 2 * sum(row.macs for row in rows) == \
        counter.get_total_flops()


def test_summary_prints_timms_parameter_count(capsys):
    assert main(["summary", "hrnet_w18_small_v2"]) == 0
    assert f"{count_parameters(meta_pair('hrnet_w18_small_v2')[0]):,} parameters" in capsys.readouterr().out


def test_the_classifier_learns_at_the_full_rate_when_the_backbone_is_slowed():
    model = create_model("hrnet_w18_small", num_classes=3)
    head = {id(model.classifier.weight), id(model.classifier.bias)}
    for group in parameter_groups(model, weight_decay=1e-4, backbone_lr_scale=0.1):
        assert all((id(param) in head) == (group["lr_scale"] == 1.0) for param in group["params"])


@pytest.mark.parametrize("build, message", [
    (lambda: create_model("hrnet_w18", layers=(1, 1, 1, 1)), "unknown option.* layers for hrnet_w18; valid options: "
                                                             "widths, modules, blocks"),
    (lambda: create_model("hrnet_w18", widths=(18, 36)), "widths needs 4 positive branch widths"),
    (lambda: create_model("hrnet_w18", modules=(1, 0, 1)), "modules needs 3 positive counts"),
    (lambda: create_model("hrnet_w18", stem_width="wide"), "stem_width must be an integer"),
    (lambda: create_model("hrnet_w18", features_only=True, out_indices=(1, 5)), "out_indices \\[5\\] do not exist"),
    (lambda: prunable(create_model("hrnet_w18_small"), keep_stream=True), "pruning is for ResNets"),
])
def test_what_hrnet_cannot_do_is_a_one_sentence_config_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@functools.cache
def timm_pair(name: str = "hrnet_w18_small") -> tuple[nn.Module, HRNet]:
    """timm's model, BN randomised, and ours with its weights, in eval mode."""
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(name)).eval()
    ours = create_model(name).eval()
    load_weights(ours, reference.state_dict())
    return reference, ours


@pytest.mark.parametrize("indices, stop_early", [(None, False), ([0, 2], True), (2, False), ([0], True)])
def test_forward_intermediates_equal_timms(indices, stop_early):
    reference, ours = timm_pair()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected_final, expected = reference.forward_intermediates(images, indices, stop_early=stop_early)
        final, intermediates = ours.forward_intermediates(images, indices, stop_early=stop_early)
    # Stopped before the last widening, the features are the branches, unmerged (a list), as timm's.
    assert isinstance(final, list) == isinstance(expected_final, list) == (stop_early and indices != [0])
    for ours_map, timm_map in zip([*(final if isinstance(final, list) else [final]), *intermediates],
                                  [*(expected_final if isinstance(expected_final, list) else [expected_final]),
                                   *expected]):
        torch.testing.assert_close(ours_map, timm_map, rtol=1e-5, atol=1e-5)


def test_features_only_gives_timms_feature_maps_and_keeps_the_classifiers_names():
    reference, ours = timm_pair()
    timm_backbone = timm.create_model("hrnet_w18_small", features_only=True).eval()
    timm_backbone.load_state_dict({k: v for k, v in reference.state_dict().items() if k in timm_backbone.state_dict()})
    backbone = HRNetFeatures(ours, out_indices=(0, 1, 2, 3, 4)).eval()
    assert set(backbone.state_dict()) <= set(ours.state_dict())
    assert backbone.feature_info.channels() == timm_backbone.feature_info.channels()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for ours_map, timm_map in zip(backbone(images), timm_backbone(images), strict=True):
            torch.testing.assert_close(ours_map, timm_map, rtol=1e-5, atol=1e-5)


def test_a_backbone_keeps_the_widening_it_needs_and_freezes_what_it_is_told():
    backbone = create_model("hrnet_w18_small", features_only=True, out_indices=(1, 2), frozen_stages=2, norm_eval=True)
    assert isinstance(backbone, HRNetFeatures) and len(backbone.incre_modules) == 2
    assert backbone.feature_info.reduction() == [4, 8]
    backbone.train()
    frozen = [*backbone.conv1.parameters(), *backbone.layer1.parameters(), *backbone.stage2.parameters()]
    assert frozen and not any(param.requires_grad for param in frozen)
    assert all(param.requires_grad for param in backbone.stage3.parameters())
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))  # norm_eval
    maps = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 128, 16, 24), (2, 256, 8, 12)]


def test_a_feature_pyramid_sits_on_the_four_widened_branches():
    pyramid = fpn("hrnet_w18_small", out_channels=64, trainable_stages=2).eval()
    assert isinstance(pyramid.body, HRNetFeatures) and pyramid.body.feature_info.reduction() == [4, 8, 16, 32]
    assert not any(param.requires_grad for param in pyramid.body.stage2.parameters())  # 2 of 5 stages train
    assert all(param.requires_grad for param in pyramid.body.stage3.parameters())
    with torch.no_grad():
        levels = pyramid(torch.randn(1, 3, 64, 96))
    assert {name: tuple(level.shape) for name, level in levels.items()} == {
        "0": (1, 64, 16, 24), "1": (1, 64, 8, 12), "2": (1, 64, 4, 6), "3": (1, 64, 2, 3), "pool": (1, 64, 1, 2)}
