"""save_weights writes self-describing, atomically written files; load_model rebuilds from them."""
from __future__ import annotations

import errno
import json

import pytest
import torch

import resnetlab.models.weights as weights_module
from resnetlab import CheckpointError, create_model, load_model, save_weights
from resnetlab.preprocessing import CIFAR10

CLASSES = ["cat", "dog", "bird"]


def test_round_trip_rebuilds_architecture_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=3, deformable=(3,), drop_path_rate=0.1).eval()
    path = save_weights(model, tmp_path / "model.safetensors", class_names=CLASSES)

    loaded = load_model(path).eval()
    assert loaded.arch == "cifar_resnet20"
    assert loaded.config == model.config
    assert loaded.class_names == CLASSES
    assert loaded.preprocessing == CIFAR10
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))

    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["arch"] == "cifar_resnet20"
    assert sidecar["config"]["deformable"] == [3]
    assert sidecar["class_names"] == CLASSES
    assert sidecar["preprocessing"]["input_size"] == 32


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    first = create_model("cifar_resnet20")
    save_weights(first, path)
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as partial:
            partial.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights_module, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_weights(create_model("cifar_resnet20"), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    load_model(path)  # still a valid file


def test_save_refuses_a_wrong_suffix_and_a_wrong_number_of_class_names(tmp_path):
    model = create_model("cifar_resnet20")
    with pytest.raises(CheckpointError, match="ending in .safetensors"):
        save_weights(model, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="3 class names given for a model with 10 classes"):
        save_weights(model, tmp_path / "model.safetensors", class_names=CLASSES)


def test_load_model_needs_resnetlab_metadata(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "bare.safetensors"
    save_file(create_model("cifar_resnet20").state_dict(), path)
    with pytest.raises(CheckpointError, match="carries no resnetlab metadata"):
        load_model(path)
