"""DeepLabV3 on a dilated ResNet, trained a few steps on real photos with exact masks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resnetlab import ConfigError, create_model, save_weights
from resnetlab.backbones import deeplabv3
from scenes import CANVAS, OBJECT_CLASSES, masks_of, pasted_scenes


def test_deeplabv3_on_a_dilated_resnet_learns_the_masks_of_pasted_objects(hymenoptera_root, cifar10_root):
    torch.manual_seed(0)
    images, targets = pasted_scenes(hymenoptera_root, cifar10_root, count=4)
    images, masks = torch.stack(images), masks_of(targets)
    model = deeplabv3("resnet18", num_classes=1 + len(OBJECT_CLASSES), output_stride=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model.train()
    losses = []
    for _ in range(10):
        logits = model(images)["out"]
        assert logits.shape == (4, 1 + len(OBJECT_CLASSES), *CANVAS)  # at the input's size
        loss = F.cross_entropy(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    model.eval()
    with torch.no_grad():
        predicted = model(images)["out"].argmax(1)
    # Chance with the background at 80% of the pixels would score every pixel as background:
    # the objects must be found too.
    assert (predicted[masks > 0] > 0).float().mean() > 0.5


@pytest.mark.parametrize("output_stride", [8, 16])
def test_the_backbone_is_dilated_to_the_output_stride_and_loads_the_undilated_classifier(output_stride, tmp_path):
    classifier = create_model("resnet18", num_classes=10)
    save_weights(classifier, tmp_path / "resnet18.safetensors")
    model = deeplabv3("resnet18", num_classes=3, output_stride=output_stride, weights=tmp_path / "resnet18.safetensors")
    body = model.backbone.body
    assert body.feature_info.reduction() == [output_stride]
    assert torch.equal(body.layer4[1].conv2.weight, classifier.layer4[1].conv2.weight)  # the head was dropped
    with torch.no_grad():
        assert model.backbone(torch.zeros(1, 3, 64, 96))["out"].shape[-2:] == (64 // output_stride, 96 // output_stride)


def test_deeplabv3_refuses_what_it_cannot_build():
    with pytest.raises(ConfigError, match="not a ResNet"):
        deeplabv3("hrnet_w18_small", num_classes=3)
    with pytest.raises(ConfigError, match="output_stride must be 8, 16 or 32"):
        deeplabv3("resnet18", num_classes=3, output_stride=4)
    with pytest.raises(ConfigError, match="at least one class"):
        deeplabv3("resnet18", num_classes=0)
