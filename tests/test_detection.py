"""ResNet-FPN as the backbone of torchvision's detectors, trained a few steps on real images."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

from resnetlab import ConfigError, create_model, save_weights
from resnetlab.backbones import fpn
from scenes import CANVAS, OBJECT_CLASSES, pasted_scenes

# Small images and few sampled anchors/proposals keep a step around a second on two CPU cores.
DETECTOR_OPTIONS = dict(min_size=128, max_size=160, rpn_batch_size_per_image=64,
                        box_batch_size_per_image=64, rpn_pre_nms_top_n_train=300,
                        rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300,
                        rpn_post_nms_top_n_test=100, box_detections_per_img=20)


def test_faster_rcnn_on_resnet50_fpn_learns_and_predicts_well_formed_boxes(hymenoptera_root, cifar10_root):
    torch.manual_seed(0)
    images, targets = pasted_scenes(hymenoptera_root, cifar10_root, count=4)
    detector = FasterRCNN(fpn("resnet50"), num_classes=1 + len(OBJECT_CLASSES), **DETECTOR_OPTIONS)
    # AdamW fits randomly initialised heads and backbone smoothly in a dozen steps; SGD at
    # detection learning rates wobbles this early on four images.
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=1e-4)
    detector.train()
    losses = []
    for _ in range(12):
        loss = sum(detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses

    detector.eval()
    with torch.no_grad():
        detections = detector(images)
    assert len(detections) == len(images)
    for detection in detections:
        boxes, labels, scores = detection["boxes"], detection["labels"], detection["scores"]
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) == len(labels) == len(scores)
        assert len(boxes) <= DETECTOR_OPTIONS["box_detections_per_img"]
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {1, 2}
        assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()
        # Boxes come back in the input image's coordinates, inside it.
        height, width = CANVAS
        assert ((boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()


def test_fpn_levels_have_out_channels_and_halving_sides():
    with torch.device("meta"):
        backbone = fpn("resnet50", out_channels=128)
        levels = backbone(torch.empty(1, 3, 200, 250))
    assert backbone.out_channels == 128
    assert list(levels) == ["0", "1", "2", "3", "pool"]
    for level, reduction in zip(levels.values(), (4, 8, 16, 32, 64)):
        assert tuple(level.shape) == (1, 128, math.ceil(200 / reduction), math.ceil(250 / reduction))


@pytest.mark.parametrize("detector", ["retinanet", "maskrcnn"])
def test_fpn_plugs_into_retinanet_and_mask_rcnn(detector):
    torch.manual_seed(0)
    backbone = fpn("resnet18")
    model = (RetinaNet(backbone, num_classes=3, min_size=128, max_size=160) if detector == "retinanet"
             else MaskRCNN(backbone, num_classes=3, **DETECTOR_OPTIONS))
    image = torch.rand(3, 96, 128)
    target = {"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 96, 128, dtype=torch.uint8)}
    target["masks"][0, 20:80, 10:60] = 1
    losses = model.train()([image], [target])
    assert losses and all(torch.isfinite(value) for value in losses.values())
    with torch.no_grad():
        (output,) = model.eval()([image])
    assert output["boxes"].shape[1:] == (4,)


def test_trainable_stages_count_from_the_top_like_torchvision():
    def trainable(backbone):
        return sorted({name.split(".")[1] for name, p in backbone.named_parameters()
                       if p.requires_grad and name.startswith("body.")})

    assert trainable(fpn("resnet18", trainable_stages=3)) == ["layer2", "layer3", "layer4"]
    assert trainable(fpn("resnet18", trainable_stages=4)) == ["layer1", "layer2", "layer3", "layer4"]
    assert trainable(fpn("resnet18", trainable_stages=5)) == ["bn1", "conv1", "layer1", "layer2",
                                                              "layer3", "layer4"]
    assert trainable(fpn("resnet18", trainable_stages=0)) == []
    assert all(p.requires_grad for p in fpn("resnet18").parameters())  # random weights: all train
    with pytest.raises(ConfigError, match="trainable_stages must be 0 to 5 for resnet18"):
        fpn("resnet18", trainable_stages=6)
    with pytest.raises(ConfigError, match="give trainable_stages instead of frozen_stages"):
        fpn("resnet18", frozen_stages=1)


def test_fpn_loads_a_saved_classifier_and_freezes_three_stages_by_default(tmp_path):
    torch.manual_seed(0)
    classifier = create_model("resnet18")
    path = save_weights(classifier, tmp_path / "resnet18.safetensors")
    backbone = fpn("resnet18", weights=path)
    assert torch.equal(backbone.body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)
    assert not backbone.body.layer1[0].conv1.weight.requires_grad
    assert backbone.body.layer2[0].conv1.weight.requires_grad
