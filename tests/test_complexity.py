"""Parameters and MACs are counted, honestly labelled, and agree with torchvision's metadata."""
from __future__ import annotations

import pytest
import torch
import torchvision

from resnetlab import count_macs, count_parameters, create_model, list_models, stage_table


def meta_model(name, **options):
    with torch.device("meta"):
        return create_model(name, **options)


@pytest.mark.parametrize("name", [n for n in list_models() if n in torchvision.models.list_models()])
def test_macs_equal_torchvision_published_gflops(name):
    # torchvision's "GFLOPS" metadata counts multiply-accumulates.
    published = torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]
    assert round(count_macs(meta_model(name)) / 1e9, 3) == pytest.approx(published, abs=1e-3)


def test_resnet50_macs_scale_with_the_square_of_the_input_side():
    model = meta_model("resnet50")
    at_224, at_448 = count_macs(model, 224), count_macs(model, 448)
    assert round(at_224 / 1e9, 2) == 4.09
    # Only the 2M-MAC classifier does not grow with the image.
    assert at_448 / at_224 == pytest.approx(4.0, abs=0.005)


def test_macs_grow_with_depth():
    macs = [count_macs(meta_model(name)) for name in ("resnet50", "resnet101", "resnet152")]
    assert macs == sorted(macs)


def test_meta_and_real_models_count_the_same():
    real = create_model("cifar_resnet20")
    assert count_macs(real) == count_macs(meta_model("cifar_resnet20"))


def test_deformable_convolutions_are_counted():
    plain, deformable = meta_model("resnet50"), create_model("resnet50", deformable=True)
    # A deformable 3x3 costs its plain twin plus the 3x3 conv that predicts 18 offsets.
    assert count_macs(deformable, 64) > count_macs(plain, 64)


def test_stage_table_rows_add_up_and_have_the_right_output_sizes():
    model = meta_model("resnet50")
    rows = stage_table(model, (224, 160))
    assert [row.name for row in rows] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [row.output_size for row in rows] == [(56, 40), (56, 40), (28, 20), (14, 10), (7, 5), (1, 1)]
    assert sum(row.params for row in rows) == count_parameters(model)
    assert [row.blocks for row in rows[1:5]] == [3, 4, 6, 3]
    assert rows[1].structure == "[1x1, 64; 3x3, 64; 1x1, 256]"
    assert (rows[4].in_channels, rows[4].out_channels) == (1024, 2048)
