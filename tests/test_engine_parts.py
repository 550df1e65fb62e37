"""The engine's small parts: schedules, parameter groups, metrics."""
from __future__ import annotations

import math

import pytest
import torch

from resnetlab import create_model
from resnetlab.config import ModelConfig
from resnetlab.engine.distributed import Context
from resnetlab.engine.metrics import ClassificationMeter
from resnetlab.engine.optim import build_optimizer, parameter_groups, set_learning_rate
from resnetlab.engine.schedules import LRSchedule
from resnetlab.engine.trainer import build_model
from resnetlab.errors import ConfigError


def test_warmup_rises_linearly_then_cosine_decays_to_the_floor():
    schedule = LRSchedule("cosine", total_steps=110, warmup_steps=10, min_factor=0.01)
    assert [schedule(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.505)  # half-way through the decay
    assert schedule(110) == pytest.approx(0.01)
    factors = [schedule(s) for s in range(10, 111)]
    assert factors == sorted(factors, reverse=True)


def test_step_schedule_divides_by_ten_at_each_milestone():
    # The CIFAR paper: lr 0.1, /10 at 32k and 48k iterations.
    schedule = LRSchedule("step", total_steps=64_000, milestones=(32_000, 48_000), gamma=0.1)
    assert [schedule(s) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_plateau_decays_only_after_patience_runs_out():
    schedule = LRSchedule("plateau", total_steps=100, patience=2, gamma=0.5)
    for accuracy in (0.5, 0.6, 0.6, 0.59):
        schedule.observe(accuracy)
    assert schedule(50) == 1.0
    schedule.observe(0.55)  # third epoch without improvement
    assert schedule(50) == 0.5


def test_no_weight_decay_on_batch_norm_and_biases_and_a_lower_backbone_lr():
    model = create_model("cifar_resnet20")
    groups = parameter_groups(model, weight_decay=1e-4, backbone_lr_scale=0.1)
    by_key = {(g["weight_decay"], g["lr_scale"]): g["params"] for g in groups}
    assert set(by_key) == {(1e-4, 0.1), (0.0, 0.1), (1e-4, 1.0), (0.0, 1.0)}
    assert all(p.ndim > 1 for p in by_key[(1e-4, 0.1)]) and all(p.ndim == 1 for p in by_key[(0.0, 0.1)])
    assert by_key[(1e-4, 1.0)] == [model.fc.weight] and by_key[(0.0, 1.0)] == [model.fc.bias]
    optimizer = build_optimizer(model, "sgd", lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=1e-4, backbone_lr_scale=0.1)
    set_learning_rate(optimizer, 0.1, 0.5)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.005, 0.05])


def test_frozen_parameters_are_left_out_of_the_optimizer():
    model = create_model("cifar_resnet20")
    model.layer1.requires_grad_(False)
    trained = {id(p) for g in parameter_groups(model, 1e-4, 1.0) for p in g["params"]}
    assert not any(id(p) in trained for p in model.layer1.parameters())


def test_meter_counts_top1_top5_per_class_and_confusion():
    meter = ClassificationMeter(num_classes=6)
    logits = torch.tensor([[9, 1, 0, 0, 0, 0], [0, 9, 8, 0, 0, 0], [0, 9, 8, 0, 0, 0],
                           [1, 2, 3, 4, 5, 0.0]])
    labels = torch.tensor([0, 2, 1, 5])
    meter.update(logits, labels, loss_sum=8.0)
    result = meter.result()
    assert result.top1 == 0.5  # rows 0 and 2
    assert result.top5 == 0.75  # class 5 is the lowest logit of the last row
    assert result.per_class[0] == 1.0 and result.per_class[2] == 0.0
    assert result.confusion[2, 1] == 1 and result.confusion.sum() == 4
    assert result.loss == pytest.approx(2.0) and not math.isnan(result.loss)


def test_sync_bn_on_cpu_processes_is_refused_and_off_alone():
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="sync_bn needs GPUs"):
        build_model(ModelConfig(sync_bn=True), 10, Context(rank=0, world_size=2, device=cpu))
    alone = build_model(ModelConfig(sync_bn=True), 10, Context(rank=0, world_size=1, device=cpu))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in alone.modules())
