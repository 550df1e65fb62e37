"""ResNets and HRNets as backbones: feature maps of every registry model, freezing, norm_eval, weights."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from resnetlab import ConfigError, ResNetConfig, create_model, list_models, load_model, save_weights
from resnetlab.backbones import HRNetFeatures, ResNetFeatures
from resnetlab.models import HRNetConfig, model_config

IMAGENET_SIZES = [(224, 224), (224, 160), (200, 250), (97, 131)]
CIFAR_SIZES = [(32, 32), (40, 24), (33, 17)]


def shallow(name: str) -> dict:
    """One block a stage (where widths are not set per block; one module and block a stage for an HRNet):
    every stem, shortcut and block kind of the registry, and its feature shapes, at a fraction of the time
    (depth within a stage changes no shape)."""
    config = model_config(name)
    if isinstance(config, HRNetConfig):
        return dict(modules=(1, 1, 1), blocks=(1, 1, 1), stage1_blocks=1)
    return {} if config.mid_channels is not None else dict(layers=(1,) * len(config.layers))


@functools.cache
def meta_classifier(name: str):
    # Shapes only: the meta device allocates nothing and computes nothing; built once per name for all
    # the tests below.
    with torch.device("meta"):
        return create_model(name, **shallow(name))


def meta_backbone(name: str, out_indices: tuple[int, ...] | None = None) -> ResNetFeatures | HRNetFeatures:
    classifier = meta_classifier(name)
    backbone = HRNetFeatures if isinstance(classifier.config, HRNetConfig) else ResNetFeatures
    # In eval mode: shapes do not depend on it, and batch norm on the meta device runs a Python
    # decomposition that takes twice as long when it also computes batch statistics.
    return backbone(classifier, out_indices=out_indices).eval()


def every_feature(name: str) -> ResNetFeatures | HRNetFeatures:
    return meta_backbone(name, out_indices=tuple(range(len(meta_classifier(name).feature_info))))


@pytest.mark.parametrize("name", list_models())
def test_feature_maps_match_feature_info_at_every_input_size(name):
    backbone = every_feature(name)
    assert backbone.feature_info == meta_classifier(name).feature_info  # every index, stem included
    sizes = CIFAR_SIZES if name.startswith("cifar") else IMAGENET_SIZES
    for height, width in sizes:
        features = backbone(torch.empty(2, 3, height, width, device="meta"))
        # Every stride-2 layer pads so that its output side is ceil(input / 2).
        expected = [(2, channels, math.ceil(height / reduction), math.ceil(width / reduction))
                    for channels, reduction in zip(backbone.feature_info.channels(),
                                                   backbone.feature_info.reduction())]
        assert [tuple(f.shape) for f in features] == expected, f"{name} at {height}x{width}"


@pytest.mark.parametrize("name", list_models())
def test_forward_intermediates_are_the_feature_maps_at_a_non_square_size(name):
    classifier = meta_classifier(name).eval()
    height, width = CIFAR_SIZES[-1] if name.startswith("cifar") else IMAGENET_SIZES[-1]
    images = torch.empty(2, 3, height, width, device="meta")
    final, intermediates = classifier.forward_intermediates(images)
    assert [f.shape for f in intermediates] == [f.shape for f in every_feature(name)(images)]
    assert final.shape == classifier.forward_features(images).shape  # a ResNet's is the last map's
    assert [f.shape for f in classifier.forward_intermediates(images, indices=2, intermediates_only=True)] == \
        [f.shape for f in intermediates[-2:]]


@pytest.mark.parametrize("name", [name for name in list_models() if isinstance(model_config(name), ResNetConfig)
                                  and model_config(name).stem == "imagenet"])
def test_output_stride_turns_the_last_strides_into_dilations(name):
    height, width = IMAGENET_SIZES[-1]
    for output_stride in (8, 16):
        with torch.device("meta"):
            classifier = create_model(name, output_stride=output_stride, **shallow(name)).eval()
        reductions = [info["reduction"] for info in classifier.feature_info]
        assert reductions == [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
        intermediates = classifier.forward_intermediates(torch.empty(1, 3, height, width, device="meta"),
                                                         intermediates_only=True)
        assert [f.shape[-2:] for f in intermediates] == \
            [(math.ceil(height / r), math.ceil(width / r)) for r in reductions]


def test_output_stride_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="output_stride must be 8, 16 or 32"):
        create_model("resnet18", output_stride=4)
    with pytest.raises(ConfigError, match="ImageNet-stem models"):
        create_model("cifar_resnet20", output_stride=8)
    with pytest.raises(ConfigError, match="intermediates"):
        meta_classifier("resnet18").forward_intermediates(torch.empty(1, 3, 64, 64, device="meta"), indices=[5])


@pytest.mark.parametrize("name", list_models())
def test_default_out_indices_are_the_stages_with_doubling_reductions(name):
    default = meta_backbone(name)
    num_stages = len(meta_classifier(name).feature_info) - 1
    assert default.out_indices == tuple(range(1, num_stages + 1))
    reductions = default.feature_info.reduction()
    assert reductions == [reductions[0] * 2 ** i for i in range(num_stages)]
    assert reductions[0] == (1 if name.startswith("cifar") else 4)


def test_create_model_dispatches_features_only():
    backbone = create_model("resnet34", features_only=True, out_indices=(0, 3), frozen_stages=1, norm_eval=True)
    assert isinstance(backbone, ResNetFeatures)
    assert (backbone.out_indices, backbone.frozen_stages, backbone.norm_eval) == ((0, 3), 1, True)
    assert backbone.feature_info.channels() == [64, 256] and backbone.feature_info.reduction() == [2, 16]
    assert backbone.stage_names == ["layer1", "layer2", "layer3"]  # layer4 is not needed, not kept


def test_feature_info_reads_like_timm():
    backbone = create_model("resnet50", features_only=True, out_indices=(2, 4))
    assert backbone.feature_info.channels() == [512, 2048]
    assert backbone.feature_info.reduction() == [8, 32]
    assert backbone.feature_info.module_name() == ["layer2", "layer4"]
    assert backbone.feature_info[0] == {"num_chs": 512, "reduction": 8, "module": "layer2"}


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "se_resnet50", "cifar_resnet20"])
def test_features_equal_the_classifiers_own_activations(name):
    torch.manual_seed(0)
    classifier = create_model(name).eval()
    backbone = create_model(name, features_only=True).eval()
    backbone.load_state_dict({k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        features = backbone(x)
        stage_outputs, h = [], classifier.forward_stem(x)
        for stage in classifier.stages:
            h = stage(h)
            stage_outputs.append(h)
        # The last map is what the head sees (after final_bn on pre-activation nets).
        assert torch.allclose(features[-1], classifier.forward_features(x))
        assert torch.allclose(classifier.forward_head(features[-1]), classifier(x))
    for feature, expected in zip(features[:-1], stage_outputs[:-1]):
        assert torch.equal(feature, expected)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_stem_feature_is_the_activation_before_the_max_pool(name):
    classifier = create_model(name).eval()
    backbone = ResNetFeatures(classifier, out_indices=(0, 1)).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        stem, layer1 = backbone(x)
        pooled_inputs = []
        classifier.maxpool.register_forward_pre_hook(lambda module, args: pooled_inputs.append(args[0]))
        expected_layer1 = classifier.layer1(classifier.forward_stem(x))
    assert stem.shape == (1, 64, 32, 24)  # stride 2, as feature_info[0] declares
    assert torch.equal(stem, pooled_inputs[0]) and torch.equal(layer1, expected_layer1)


def test_state_dict_keys_are_the_classifiers_without_the_head_and_dropped_stages():
    classifier_keys = set(create_model("resnet50").state_dict())
    backbone_keys = set(create_model("resnet50", features_only=True).state_dict())
    assert backbone_keys == {k for k in classifier_keys if not k.startswith("fc.")}
    truncated_keys = set(create_model("resnet50", features_only=True, out_indices=(1, 2)).state_dict())
    assert truncated_keys == {k for k in classifier_keys if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")}


def test_a_saved_classifier_becomes_a_backbone_without_copying(tmp_path):
    torch.manual_seed(0)
    classifier = create_model("cifar_resnet20").eval()
    path = save_weights(classifier, tmp_path / "classifier.safetensors")
    reloaded = load_model(path)
    backbone = ResNetFeatures(reloaded, out_indices=(2, 3)).eval()
    assert backbone.layer3 is reloaded.layer3  # the same modules: fine-tuning one tunes both
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(x)[-1], classifier.forward_features(x))


def test_frozen_stages_get_no_gradients_and_stay_unchanged_by_a_step():
    torch.manual_seed(0)
    backbone = create_model("resnet18", features_only=True, frozen_stages=2)
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9)  # all of them, carelessly
    backbone.train()
    sum(f.square().mean() for f in backbone(torch.randn(2, 3, 64, 64))).backward()
    optimizer.step()
    for name, param in backbone.named_parameters():
        assert param.requires_grad is not name.startswith(frozen), name
        if name.startswith(frozen):
            assert param.grad is None, name
    after = backbone.state_dict()
    # Weights and BN running statistics alike: the frozen part is in eval mode.
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen))
    assert not torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])
    assert not torch.equal(before["layer3.0.bn1.running_mean"], after["layer3.0.bn1.running_mean"])
    assert not backbone.bn1.training and not backbone.layer2[0].bn1.training
    assert backbone.layer3[0].bn1.training


def test_frozen_stage_zero_freezes_only_the_stem():
    backbone = create_model("resnet18", features_only=True, frozen_stages=0).train()
    assert not backbone.conv1.weight.requires_grad and not backbone.bn1.training
    assert all(p.requires_grad for p in backbone.layer1.parameters())


def test_norm_eval_keeps_batchnorm_statistics_in_train_mode():
    torch.manual_seed(0)
    backbone = create_model("resnet18", features_only=True, norm_eval=True).train()
    stats = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    loss = sum(f.mean() for f in backbone(torch.randn(4, 3, 64, 64) * 3 + 1))
    loss.backward()
    assert backbone.training
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    after = backbone.state_dict()
    assert all(torch.equal(stats[k], after[k]) for k in stats)
    assert backbone.layer4[1].conv2.weight.grad is not None  # everything still trains


def test_without_norm_eval_train_mode_updates_batchnorm_statistics():
    backbone = create_model("resnet18", features_only=True).train()
    before = backbone.bn1.running_mean.clone()
    backbone(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert not torch.equal(before, backbone.bn1.running_mean)


@pytest.mark.parametrize("out_indices, message", [
    ((), "out_indices is empty"),
    ((1, 5), r"out_indices \[5\] do not exist: resnet18 has features 0 \(the stem\) to 4 \(its last stage\)"),
    ((-1,), r"out_indices \[-1\] do not exist"),
    ((3, 1), "out_indices must increase without repeats"),
    ((2, 2), "out_indices must increase without repeats"),
    ((1.0, 2), "out_indices must be integers"),
])
def test_bad_out_indices_raise_a_clear_config_error(out_indices, message):
    with pytest.raises(ConfigError, match=message):
        create_model("resnet18", features_only=True, out_indices=out_indices)


def test_cifar_nets_have_three_stages_and_say_so():
    with pytest.raises(ConfigError, match=r"cifar_resnet20 has features 0 \(the stem\) to 3 \(its last stage\)"):
        create_model("cifar_resnet20", features_only=True, out_indices=(1, 2, 3, 4))


def test_bad_frozen_stages_and_backbone_options_without_features_only_are_rejected():
    with pytest.raises(ConfigError, match="frozen_stages must be None"):
        create_model("resnet18", features_only=True, out_indices=(1, 2), frozen_stages=3)
    with pytest.raises(ConfigError, match="frozen_stages must be None"):
        create_model("resnet18", features_only=True, frozen_stages=-1)
    with pytest.raises(ConfigError, match="pass features_only=True"):
        create_model("resnet18", out_indices=(1, 2))


def test_backbone_trains_end_to_end_on_a_toy_segmentation_loss():
    # The features are differentiable all the way to the stem when nothing is frozen.
    torch.manual_seed(0)
    backbone = create_model("cifar_resnet20", features_only=True, out_indices=(0, 3))
    stem, deepest = backbone(torch.randn(2, 3, 32, 32))
    loss = F.mse_loss(stem.mean(1), torch.zeros(2, 32, 32)) + deepest.mean()
    loss.backward()
    assert backbone.conv1.weight.grad is not None and backbone.conv1.weight.grad.abs().sum() > 0


def test_a_classifier_frozen_before_wrapping_stays_frozen_in_the_backbone():
    model = create_model("resnet18")
    model.freeze(stages=1)
    backbone = ResNetFeatures(model).train()
    assert not backbone.bn1.training and not backbone.layer1[0].bn1.training  # statistics kept
    assert backbone.layer2[0].bn1.training
    assert not any(p.requires_grad for p in backbone.layer1.parameters())


@pytest.mark.parametrize("holder", ["classifier", "backbone"])
def test_freezing_every_stage_of_a_preact_net_freezes_its_final_norm_too(holder):
    model = create_model("preact_resnet18")
    if holder == "classifier":
        model.freeze(stages=4)
        frozen = model.train()
    else:
        frozen = ResNetFeatures(model, frozen_stages=4).train()
    assert not frozen.final_bn.training and not frozen.final_bn.weight.requires_grad
