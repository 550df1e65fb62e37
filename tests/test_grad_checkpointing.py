"""Gradient checkpointing: the same step for less memory, on every kind of block."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from resnetlab import create_model
from resnetlab.cli import build_parser
from resnetlab.cli.training import config_from_args


def one_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    output = model(images)  # logits, or a backbone's feature maps
    loss = F.cross_entropy(output, labels) if isinstance(output, torch.Tensor) else sum(f.mean() for f in output)
    loss.backward()


@pytest.mark.parametrize("name, features_only", [
    ("cifar_resnet20", False), ("resnet26d", False), ("preact_resnet18", False), ("seresnext26t_32x4d", False),
    ("resnet18", True), ("test_resnet", False), ("resnetv2_50d_frn", False), ("hrnet_w18_small", True)])
def test_a_checkpointed_step_has_the_plain_steps_gradients_and_statistics(name, features_only):
    torch.manual_seed(0)
    options = dict(features_only=True) if features_only else dict(num_classes=5)
    plain = create_model(name, **options).train()
    recomputed = copy.deepcopy(plain)
    recomputed.set_grad_checkpointing(True)
    images, labels = torch.randn(4, 3, 40, 40), torch.tensor([0, 1, 2, 3])
    one_step(plain, images, labels)
    one_step(recomputed, images, labels)
    for (key, expected), (_, got) in zip(plain.named_parameters(), recomputed.named_parameters()):
        assert got.grad is not None, f"{key} got no gradient"
        assert torch.allclose(got.grad, expected.grad, rtol=1e-5, atol=1e-7), key
    # Each BN's running statistics took one step, not a second one while its block was recomputed.
    for (key, expected), (_, got) in zip(plain.named_buffers(), recomputed.named_buffers()):
        assert torch.equal(got, expected), key


def test_checkpointing_is_off_by_default_and_skipped_without_gradients():
    model = create_model("resnet18d", num_classes=3).eval()
    assert not model.grad_checkpointing
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_the_train_flag_reaches_the_model_config():
    args = build_parser().parse_args(["train", "--model", "resnet18", "--grad-checkpointing"])
    assert config_from_args(args).model.grad_checkpointing
