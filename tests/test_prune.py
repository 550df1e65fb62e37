"""resnetlab prune: a smaller dense ResNet that computes what the original computed with its strong channels."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab import count_macs, count_parameters, create_model, load_model, load_weights, save_weights
from resnetlab.cli import main
from resnetlab.compress.prune import INNER_CHANNELS, prune_model
from resnetlab.errors import ConfigError
from subsets import cifar_subset

BLOCK_TYPES = ["cifar_resnet20", "resnet50", "preact_resnet18", "cifar_preact_resnet164", "se_resnet50"]


def kill_three_quarters(model: nn.Module) -> nn.Module:
    """Make 3 of every 4 inner channels of each block output exactly zero, keeping the rest intact."""
    torch.manual_seed(0)
    for stage in model.stages:
        for block in stage:
            for maker, norm, _ in INNER_CHANNELS[model.config.block]:
                conv, bn = getattr(block, maker), getattr(block, norm)
                dead = torch.arange(conv.out_channels) % 4 != 0
                with torch.no_grad():
                    conv.weight[dead] = 0
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.1, 0.1)
                    bn.running_mean.uniform_(-0.1, 0.1)
                    bn.running_var.uniform_(0.8, 1.2)
                    bn.weight[dead], bn.bias[dead], bn.running_mean[dead] = 0, 0, 0
    return model.eval()


@pytest.mark.parametrize("criterion", ["l1", "bn-gamma"])
@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_pruning_dead_channels_leaves_the_outputs_unchanged(name, criterion):
    # Half the inner channels are kept, and only a quarter are alive: both criteria must rank the
    # dead ones last, and the slicing of every conv, BN and reader must keep the live ones aligned.
    model = kill_three_quarters(create_model(name, num_classes=10, zero_init_residual=False))
    pruned = prune_model(model, target_macs=0.5, criterion=criterion).eval()
    size = 32 if name.startswith("cifar") else 64
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(images), pruned(images)
    assert (got - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())
    assert count_macs(pruned) <= 0.5 * count_macs(model)
    assert count_parameters(pruned) < 0.6 * count_parameters(model)


def test_the_pruned_model_is_a_plain_config_that_loads_back(tmp_path):
    model = create_model("cifar_resnet56", num_classes=10).eval()
    pruned = prune_model(model, 0.5).eval()
    path = save_weights(pruned, tmp_path / "pruned.safetensors")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = pruned(images)
        assert torch.equal(load_model(path).eval()(images), expected)
        widths = pruned.config.mid_channels
        rebuilt = create_model("cifar_resnet56", num_classes=10, mid_channels=widths).eval()
        load_weights(rebuilt, path)
        assert torch.equal(rebuilt(images), expected)
    assert all(len(stage) == 9 for stage in widths) and widths[0][0] == 8  # 16 -> 8 inner channels


@pytest.mark.parametrize("name, options, target, message", [
    ("cifar_resnet20", {}, 1.5, "target MACs is a fraction of the model's, between 0 and 1"),
    ("cifar_resnet20", {}, 0.01, "ask for --target-macs above"),
    ("resnext50_32x4d", {}, 0.5, "pruning grouped convolutions (ResNeXt, groups=32) is not supported"),
    ("resnet18", {"deformable": True}, 0.5, "pruning deformable models is not supported"),
])
def test_impossible_pruning_requests_are_refused(name, options, target, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prune_model(create_model(name, num_classes=10, **options), target)


def test_prune_command_fine_tunes_on_real_data(cifar_classifier, cifar10_root, tmp_path, capsys):
    data = cifar_subset(cifar10_root, tmp_path / "data", train_per_class=100, test_per_class=50)
    out = tmp_path / "pruned"
    assert main(["prune", "--checkpoint", str(cifar_classifier), "--data", str(data), "--target-macs", "0.5",
                 "--finetune-epochs", "2", "--batch-size", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pruned to 0.5 of its MACs" in printed and "prune (before training)" in printed
    original, tuned = load_model(cifar_classifier), load_model(out / "1-prune" / "finetune" / "best.safetensors")
    assert count_macs(tuned) <= 0.5 * count_macs(original)
    assert tuned.class_names == original.class_names
    assert main(["prune", "--checkpoint", str(cifar_classifier), "--data", str(data), "--out", str(out)]) == 2
    assert "already holds a compression report" in capsys.readouterr().err


def test_bench_counts_the_pruned_widths(tmp_path):
    from resnetlab.bench.run import run_benchmark

    pruned = prune_model(create_model("cifar_resnet20", num_classes=10), 0.5)
    path = save_weights(pruned, tmp_path / "pruned.safetensors")
    (row,) = run_benchmark([], checkpoint=str(path), threads=1, warmup=0, repeats=1)
    assert row.macs == count_macs(pruned) and row.params == count_parameters(pruned)
