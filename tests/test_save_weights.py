"""save_weights writes self-describing, atomically written files; load_model rebuilds from them."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from resnetlab import CheckpointError, create_model, load_model, load_weights, save_weights
from resnetlab.deploy.export import export_model
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


@pytest.fixture()
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_saved_files_get_the_mode_a_plain_open_gives(tmp_path, umask_027):
    save_weights(create_model("cifar_resnet20"), tmp_path / "model.safetensors")
    (tmp_path / "plain.txt").write_text("written by open()")
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"model.safetensors": 0o640, "model.json": 0o640, "plain.txt": 0o640}
    assert os.umask(0o027) == 0o027  # reading the umask left it as it was


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    first = create_model("cifar_resnet20")
    save_weights(first, path)
    before = path.read_bytes()

    write_bytes = Path.write_bytes

    def disk_full(file: Path, data) -> None:
        write_bytes(file, b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(Path, "write_bytes", disk_full)
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


def test_load_model_of_a_state_dict_says_how_to_convert_it_and_the_advice_works(tmp_path):
    source = create_model("cifar_resnet20")
    path = tmp_path / "model.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert str(error.value) == (
        f"{path} looks like a PyTorch checkpoint, not a .safetensors file written by resnetlab train or save_weights; "
        f"to use its state dict: model = create_model(name); load_weights(model, '{path}'); "
        "save_weights(model, 'model.safetensors')")

    model = create_model("cifar_resnet20")  # what the message says to do
    load_weights(model, path)
    save_weights(model, tmp_path / "model.safetensors")
    assert torch.equal(load_model(tmp_path / "model.safetensors").fc.weight, source.fc.weight)


def test_load_model_of_an_export_says_what_it_is_and_what_is_accepted(tmp_path):
    path = export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx").path
    expected = f"{path} looks like an ONNX model, not a .safetensors file written by resnetlab train or save_weights"
    with pytest.raises(CheckpointError, match=f"^{re.escape(expected)}$"):
        load_model(path)


def test_load_model_of_a_run_folder_names_the_weights_in_it(tmp_path):
    save_weights(create_model("cifar_resnet20"), tmp_path / "best.safetensors")
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path))} is a folder; give a .safetensors file, "
                                              f"e.g. {re.escape(str(tmp_path / 'best.safetensors'))}$"):
        load_model(tmp_path)
