"""resnetlab prune: a smaller dense ResNet that computes what the original computed with its strong channels."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from resnetlab import count_macs, count_parameters, create_model, load_model, load_weights, save_weights
from resnetlab.cli import main
from resnetlab.compress.prune import BN_TENSORS, INNER_CHANNELS, prune_model, recalibrate_batch_norm, stream_tensors
from resnetlab.deploy.files import load_deployed
from resnetlab.engine.evaluation import evaluate_model
from resnetlab.errors import ConfigError
from subsets import cifar_subset

# Every block type, each shortcut kind (identity, zero-padding, projection with and without BN),
# and the attention kinds, whose stream stays whole.
PRUNINGS = [("cifar_resnet20", False), ("resnet50", False), ("preact_resnet18", False),
            ("cifar_preact_resnet164", False), ("cifar_resnet20", True), ("se_resnet50", True),
            ("resnet26d", False),  # ResNet-D: a deep stem, average-pool shortcuts
            ("ecaresnet26t", True), ("resnetblur18", True)]  # ECA and a tiered stem; blur-pool anti-aliasing


def kill_three_quarters(model: nn.Module) -> nn.Module:
    """Make 3 of every 4 channels of the residual stream, and of each block's inside, carry nothing.

    The filters that make a dead channel and the BN scales on it shrink a millionfold, each by a
    random factor of its own, and its BN shifts go to zero: every layer then ranks its dead channels
    in an order of its own, so a stream ranked apart from what a shortcut ties it to keeps other
    dead channels there, and the live ones no longer line up in the additions.
    """
    torch.manual_seed(0)
    with torch.no_grad():
        for bn in (module for module in model.modules() if isinstance(module, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.8, 1.2)
        state = model.state_dict()
        dying = []  # (state-dict key, the dimension along the channels)
        for stage_name, stage in zip(model.stage_names, model.stages):
            for index in range(len(stage)):
                for maker, norm, _ in INNER_CHANNELS[model.config.block]:
                    prefix = f"{stage_name}.{index}."
                    dying += [(prefix + maker + ".weight", 0)] + [(f"{prefix}{norm}.{name}", 0) for name in BN_TENSORS]
        dying += [(tensor.name, tensor.dim) for segment in stream_tensors(model) for tensor in segment
                  if tensor.role != "reader"]
        for name, dim in dying:
            channels = state[name].movedim(dim, 0)
            dead = torch.arange(len(channels)) % 4 != 0
            if name.endswith(("bias", "running_mean")):
                channels[dead] = 0
            elif not name.endswith("running_var"):
                shrink = 1e-6 * torch.rand(int(dead.sum()))
                channels[dead] *= shrink.view(-1, *[1] * (channels.dim() - 1))
    return model.eval()


@pytest.mark.parametrize("name, keep_stream, criterion", [
    *((name, keep_stream, criterion) for name, keep_stream in PRUNINGS for criterion in ("l1", "bn-gamma")),
    ("cifar_resnet20", False, "taylor"), ("preact_resnet18", False, "taylor")])
def test_pruning_dead_channels_leaves_the_outputs_unchanged(name, keep_stream, criterion):
    # About 70% of the channels are kept, and only a quarter are alive: every criterion must rank
    # the dead ones last, and the slicing of every conv, BN and reader must keep the live ones
    # aligned, through every shortcut and addition of the residual stream.
    model = kill_three_quarters(create_model(name, num_classes=10, zero_init_residual=False))
    size = 32 if name.startswith("cifar") else 64
    batches = [(torch.randn(8, 3, size, size), torch.randint(0, 10, (8,)))]
    before = copy.deepcopy(model.state_dict())
    pruned = prune_model(model, target_macs=0.5, criterion=criterion, keep_stream=keep_stream,
                         batches=batches).eval()
    # compress passes the original it measures; pruning must not touch it
    assert all(torch.equal(tensor, before[key]) for key, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert (pruned.config.stream_channels is None) == keep_stream
    assert_same_outputs(model, pruned, size)
    assert count_macs(pruned) <= 0.5 * count_macs(model)
    assert count_parameters(pruned) < 0.6 * count_parameters(model)


def assert_same_outputs(model: nn.Module, pruned: nn.Module, size: int) -> None:
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(images), pruned.eval()(images)
    assert (got - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("name, keep_stream, multiple", [
    ("cifar_resnet56", False, 8), ("cifar_preact_resnet164", False, 8), ("resnet50", False, 16),
    ("resnet50", True, 16)])
def test_pruned_widths_round_to_the_multiple_asked(name, keep_stream, multiple):
    # Rounded widths keep at least the live quarter of each layer, so the outputs must not change.
    model = kill_three_quarters(create_model(name, num_classes=10, zero_init_residual=False))
    pruned = prune_model(model, 0.5, keep_stream=keep_stream, multiple=multiple)
    widths = [width for stage in pruned.config.mid_channels for width in stage]
    widths += [] if keep_stream else list(pruned.config.stream_channels)
    assert all(width % multiple == 0 for width in widths) and len(set(widths)) > 1
    # Within the budget, and not far below it: what rounding leaves is filled, a multiple at a time.
    assert 0.45 * count_macs(model) <= count_macs(pruned) <= 0.5 * count_macs(model)
    assert_same_outputs(model, pruned, 32 if name.startswith("cifar") else 64)


@pytest.mark.parametrize("name", ["cifar_resnet20", "preact_resnet18"])
def test_a_pruned_model_can_be_pruned_again(name):
    # Iterative pruning: the second round starts from the pruned widths, stream included, and
    # still keeps the live quarter (0.7 of the MACs twice keeps about 70% of the channels).
    model = kill_three_quarters(create_model(name, num_classes=10, zero_init_residual=False))
    once = prune_model(model, 0.7, keep_stream=False, multiple=1)
    twice = prune_model(once, 0.7, keep_stream=False, multiple=1)
    assert all(after < before for before, after in zip(once.config.stream_channels, twice.config.stream_channels))
    assert count_macs(twice) <= 0.7 * count_macs(once)
    assert_same_outputs(model, twice, 32 if name.startswith("cifar") else 64)


def test_a_multiple_too_coarse_for_the_target_is_refused():
    # cifar_resnet20's first stage is 16 channels wide: rounded to 16, it cannot shrink at all.
    with pytest.raises(ConfigError, match="keeps 60% of its MACs with 16 channels per layer"):
        prune_model(create_model("cifar_resnet20", num_classes=10), 0.5, multiple=16)
    with pytest.raises(ConfigError, match="round to a multiple of at least 1, not 0"):
        prune_model(create_model("cifar_resnet20", num_classes=10), 0.5, multiple=0)


@pytest.mark.parametrize("keep_stream", [False, True])
def test_the_pruned_model_is_a_plain_config_that_loads_back(tmp_path, keep_stream):
    model = create_model("cifar_resnet56", num_classes=10).eval()
    pruned = prune_model(model, 0.5, keep_stream=keep_stream, multiple=1).eval()  # exact widths
    path = save_weights(pruned, tmp_path / "pruned.safetensors")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = pruned(images)
        assert torch.equal(load_model(path).eval()(images), expected)
        mids, streams = pruned.config.mid_channels, pruned.config.stream_channels
        rebuilt = create_model("cifar_resnet56", num_classes=10, mid_channels=mids, stream_channels=streams).eval()
        load_weights(rebuilt, path)
        assert torch.equal(rebuilt(images), expected)
    assert all(len(stage) == 9 for stage in mids)
    if keep_stream:
        assert mids[0][0] == 8 and streams is None  # 16 -> 8 inner channels
    else:  # about 70% of each kind; the stem and stage 1 are one stream, zero-padded into stages 2 and 3
        assert mids[0][0] == 11 and streams[0] == streams[1] == 11 and streams[1] < streams[2] < streams[3] < 64


def test_taylor_scores_are_the_first_order_loss_change_of_each_channel():
    # Shrinking output channel c of a conv by a factor (1 - eps) changes the loss by
    # -eps * (sum over its filter of weight x gradient) to first order; the criterion is that sum
    # squared (eps = 1 removes the channel). Check it against the true change, in float64.
    from resnetlab.compress.prune import _taylor_saliency

    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10).double().eval()
    images, labels = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    saliency = _taylor_saliency(model, [(images, labels)])["layer3.2.conv2.weight"][:16]
    conv, eps = model.layer3[2].conv2, 1e-4
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(images), labels)
        changes = []
        for channel in range(16):
            conv.weight[channel] *= 1 - eps
            changes.append((nn.functional.cross_entropy(model(images), labels) - loss).item() / eps)
            conv.weight[channel] /= 1 - eps
    assert torch.allclose(torch.tensor(changes, dtype=torch.float64).square(), saliency.double(), rtol=1e-2, atol=1e-9)
    assert saliency.max() > 100 * saliency.min()  # the channels differ: the ranking means something
    with pytest.raises(ConfigError, match="the taylor criterion ranks channels by their effect on the loss"):
        prune_model(model, 0.5, criterion="taylor")


@pytest.mark.parametrize("streams, message", [
    ((16, 16, 32), "stream_channels needs 4 positive whole widths"),
    ((16, 16, 32.5, 64), r"stream_channels must be a list of integers or null, not \(16, 16, 32.5, 64\)"),
    ((16, 12, 32, 64), "stage 1 starts with an identity shortcut, so its stream width must equal the one before"),
    ((16, 16, 12, 64), "stage 2 zero-pads its shortcut, so its stream width cannot shrink"),
])
def test_stream_widths_that_break_an_addition_are_refused(streams, message):
    with pytest.raises(ConfigError, match=message):
        create_model("cifar_resnet20", stream_channels=streams)


@pytest.mark.parametrize("name, options, target, message", [
    ("cifar_resnet20", {}, 1.5, "target MACs is a fraction of the model's, between 0 and 1"),
    ("cifar_resnet20", {}, 0.001, "ask for --target-macs above"),
    ("resnext50_32x4d", {}, 0.5, "pruning grouped convolutions (ResNeXt, groups=32) is not supported"),
    ("resnet18", {"deformable": True}, 0.5, "pruning deformable models is not supported"),
    ("se_resnet50", {}, 0.5, "pruning the residual stream of SE attention models is not supported"),
    ("ecaresnet26t", {}, 0.5, "pruning the residual stream of ECA attention models is not supported"),
    ("resnet26", {"block_reduce_first": 2}, 0.5, "pruning networks whose first 1x1s have widths of their own"),
    ("resnet50_gn", {}, 0.5, "pruning group norm models is not supported"),
    ("resnetv2_50d_frn", {}, 0.5, "pruning frn norm models is not supported"),
    ("preact_resnet18", {"weight_standardization": True}, 0.5, "pruning weight-standardised models (BiT)"),
    ("skresnet18", {}, 0.5, "pruning sk_basic blocks is not supported"),
    ("resnet26d", {"replace_stem_pool": True}, 0.5, "pruning the residual stream of ResNet-RS models"),
])
def test_impossible_pruning_requests_are_refused(name, options, target, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prune_model(create_model(name, num_classes=10, **options), target, keep_stream=False)


def test_prune_command_fine_tunes_on_real_data(cifar_classifier, cifar10_root, tmp_path, capsys):
    # Few images: what is checked is the command's plumbing (flags reaching the fine-tune, the file
    # handed on), not accuracy, and bf16 autocast is slow on a CPU without native bf16 (5 min for
    # 1,000 images on Zen 3). 100 images still make 3 batches for taylor and 3 steps an epoch.
    data = cifar_subset(cifar10_root, tmp_path / "data", train_per_class=10, test_per_class=10)
    out = tmp_path / "pruned"
    assert main(["prune", "--checkpoint", str(cifar_classifier), "--data", str(data), "--target-macs", "0.5",
                 "--criterion", "taylor", "--prune-stream", "--finetune-epochs", "2", "--batch-size", "32",
                 "--precision", "bf16", "--round-to", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pruned to 0.5 of its MACs" in printed and "prune (before training)" in printed
    handed_on = json.loads((out / "report.json").read_text())[-1]["path"]
    assert handed_on.endswith("1-prune/finetune/last.safetensors")  # test/ only: the last epoch, not the best
    original, tuned = load_model(cifar_classifier), load_model(handed_on)
    assert count_macs(tuned) <= 0.5 * count_macs(original)
    assert all(width % 8 == 0 for width in tuned.config.stream_channels)
    assert tuned.class_names == original.class_names
    assert "precision: bf16" in (out / "1-prune" / "finetune" / "config.yaml").read_text()
    assert main(["prune", "--checkpoint", str(cifar_classifier), "--data", str(data), "--out", str(out)]) == 2
    assert "already holds a compression report" in capsys.readouterr().err


def test_prune_on_too_few_images_asks_for_more_images_not_a_smaller_batch(cifar10_root, tmp_path, capsys):
    data = cifar_subset(cifar10_root, tmp_path / "data", train_per_class=3, test_per_class=1)  # 30 images
    classes = sorted(path.name for path in (data / "train").iterdir())
    checkpoint = save_weights(create_model("cifar_resnet20", num_classes=10), tmp_path / "net.safetensors",
                              class_names=classes)
    assert main(["prune", "--checkpoint", str(checkpoint), "--data", str(data), "--batch-size", "8",
                 "--out", str(tmp_path / "pruned")]) == 2
    error = capsys.readouterr().err
    assert "needs at least 32 training images" in error and "has 30" in error and "batch" not in error


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


def test_recalibrated_statistics_are_the_average_over_the_batches():
    model = create_model("cifar_resnet20", num_classes=10).eval()
    batches = [torch.randn(8, 3, 32, 32) * 2 + 1, torch.randn(8, 3, 32, 32)]
    # In training mode every BN normalises by the batch's own statistics, so each batch can be
    # measured alone: with momentum 1 the running statistics become that batch's.
    per_batch = []
    for images in batches:
        alone = copy.deepcopy(model).train()
        for norm in batch_norms(alone):
            norm.momentum = 1.0
        with torch.no_grad():
            alone(images)
        per_batch.append([(norm.running_mean, norm.running_var) for norm in batch_norms(alone)])
    learned = {name: tensor.clone() for name, tensor in model.named_parameters()}
    recalibrate_batch_norm(model, batches)
    for norm, first, second in zip(batch_norms(model), *per_batch):
        torch.testing.assert_close(norm.running_mean, (first[0] + second[0]) / 2)
        torch.testing.assert_close(norm.running_var, (first[1] + second[1]) / 2)
        assert norm.momentum == 0.1 and not norm.training and norm.num_batches_tracked.item() == 2
    assert all(torch.equal(tensor, learned[name]) for name, tensor in model.named_parameters())


@pytest.mark.parametrize("batches, error, message", [
    ([], ConfigError, "needs training images"),
    ([torch.randn(4, 3, 32, 32), torch.randn(4, 5, 32, 32)], RuntimeError, "channels"),  # the second cannot run
])
def test_recalibration_that_fails_changes_nothing(batches, error, message):
    model = create_model("cifar_resnet20", num_classes=10).eval()
    model.stages[0][0].bn1.train()  # a mix of modes, each kept
    modes = [norm.training for norm in batch_norms(model)]
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=message):
        recalibrate_batch_norm(model, batches)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    assert [norm.training for norm in batch_norms(model)] == modes and sum(modes) == 1
    assert all(norm.momentum == 0.1 for norm in batch_norms(model))


def test_pruning_re_estimates_the_statistics_and_wins_back_accuracy(cifar_classifier, cifar10_root, tmp_path):
    data = cifar_subset(cifar10_root, tmp_path / "data", train_per_class=30, test_per_class=50)
    assert main(["prune", "--checkpoint", str(cifar_classifier), "--data", str(data),
                 "--finetune-epochs", "0", "--out", str(tmp_path / "pruned")]) == 0
    _, pruned = json.loads((tmp_path / "pruned" / "report.json").read_text())
    # The same pruning, left with the statistics of the wider network it came from.
    stale = save_weights(prune_model(load_model(cifar_classifier), 0.5), tmp_path / "stale.safetensors")
    stale_top1 = evaluate_model(load_deployed(stale), str(data))[0].top1
    assert pruned["top1"] > stale_top1 + 0.05


def test_bench_counts_the_pruned_widths(tmp_path):
    from resnetlab.bench.run import BenchSettings, run_benchmark

    pruned = prune_model(create_model("cifar_resnet20", num_classes=10), 0.5, keep_stream=False)
    path = save_weights(pruned, tmp_path / "pruned.safetensors")
    (row,) = run_benchmark(BenchSettings([], checkpoint=str(path), threads=1, warmup=0, repeats=1))
    assert row.macs == count_macs(pruned) and row.params == count_parameters(pruned)
