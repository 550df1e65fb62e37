"""load_weights: every source, the repairs it makes, and a clear error for everything else."""
from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from resnetlab import CheckpointError, create_model, load_weights


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10).eval()


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch):
    """The download cache lives under TORCH_HOME; keep it inside the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture()
def served(tmp_path):
    """A folder served over HTTP on localhost, and its URL: downloads without a network."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def write_weights(model: torch.nn.Module, path: Path) -> Path:
    """The state dict as safetensors or as a torch pickle, by the path's suffix."""
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_loads_from_a_file(source_model, tmp_path, suffix):
    path = write_weights(source_model, tmp_path / f"weights{suffix}")
    model = create_model("resnet18", num_classes=10)
    report = load_weights(model, path)
    assert same_weights(model, source_model)
    assert report.layout == "torchvision" and report.messages == []


def test_loads_a_state_dict_nested_in_a_training_checkpoint_and_wrapped_by_ddp(source_model, tmp_path):
    wrapped = {f"module.{k}": v for k, v in source_model.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": torch.tensor(3), "model": wrapped}, path)
    model = create_model("resnet18", num_classes=10)
    load_weights(model, path)
    assert same_weights(model, source_model)


def test_url_is_downloaded_once_into_the_cache(source_model, served, hub_dir):
    folder, base = served
    path = folder / "resnet18-cifar.pth"
    torch.save(source_model.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    hashed = path.rename(folder / f"resnet18-{digest}.pth")  # torchvision's naming: name-<sha256 prefix>
    url = f"{base}/{hashed.name}"

    model = create_model("resnet18", num_classes=10)
    load_weights(model, url)
    assert same_weights(model, source_model)
    assert (hub_dir / hashed.name).is_file()

    shutil.rmtree(folder)  # the second load must not need the source any more
    again = create_model("resnet18", num_classes=10)
    load_weights(again, url)
    assert same_weights(again, source_model)


def test_url_whose_content_does_not_match_its_hash_is_refused(source_model, served, hub_dir):
    folder, base = served
    path = folder / "resnet18-deadbeef.pth"
    torch.save(source_model.state_dict(), path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(create_model("resnet18", num_classes=10), f"{base}/{path.name}")
    assert not (hub_dir / path.name).exists()


def test_a_file_url_is_read_in_place_never_from_a_stale_cached_copy(source_model, tmp_path, hub_dir):
    torch.manual_seed(1)
    other_model = create_model("resnet18", num_classes=10).eval()
    (tmp_path / "first run").mkdir()
    (tmp_path / "second run").mkdir()
    first = write_weights(source_model, tmp_path / "first run" / "r18.pth")
    second = write_weights(other_model, tmp_path / "second run" / "r18.pth")  # same name, other weights

    for path, expected in ((first, source_model), (second, other_model)):
        model = create_model("resnet18", num_classes=10)
        load_weights(model, path.as_uri())  # file:///.../first%20run/r18.pth
        assert same_weights(model, expected)
    assert not hub_dir.exists()  # nothing copied into the cache


def test_offline_url_gives_a_clear_error(hub_dir):
    url = "http://127.0.0.1:9/resnet50-11ad3fa6.pth"  # nothing listens on the discard port
    with pytest.raises(CheckpointError) as error:
        load_weights(create_model("resnet18"), url)
    message = str(error.value)
    assert "could not download" in message and "pass the file's path" in message
    assert str(hub_dir / "resnet50-11ad3fa6.pth") in message


def test_a_different_class_count_reinitialises_the_head(source_model, caplog):
    model = create_model("resnet18", num_classes=3)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        report = load_weights(model, source_model.state_dict())
    assert report.head_reinitialized
    assert "10 classes and the model 3" in caplog.text
    assert model.fc.out_features == 3
    backbone = {k: v for k, v in source_model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())


def test_a_model_without_classifier_drops_the_head(source_model):
    model = create_model("resnet18", num_classes=0)
    report = load_weights(model, source_model.state_dict())
    assert "head was dropped" in report.messages[0]


def test_single_channel_input_keeps_the_pretrained_filters(source_model):
    gray = create_model("resnet18", num_classes=10, in_chans=1).eval()
    report = load_weights(gray, source_model.state_dict())
    assert report.adapted_in_chans == (3, 1)
    # Summed filters on a gray image equal the RGB filters on that image repeated thrice.
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gray(image), source_model(image.repeat(1, 3, 1, 1)), atol=1e-4)


def test_a_deep_stem_adapts_its_first_conv_to_one_input_channel():
    torch.manual_seed(0)
    rgb = create_model("resnet18d", num_classes=10).eval()
    gray = create_model("resnet18d", num_classes=10, in_chans=1).eval()
    assert load_weights(gray, rgb.state_dict()).adapted_in_chans == (3, 1)
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gray(image), rgb(image.repeat(1, 3, 1, 1)), atol=1e-4)


def test_more_input_channels_repeat_and_rescale_the_pretrained_filters(source_model):
    model = create_model("resnet18", num_classes=10, in_chans=6).eval()
    load_weights(model, source_model.state_dict())
    original = source_model.conv1.weight
    assert torch.allclose(model.conv1.weight, torch.cat([original, original], dim=1) / 2)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the same image on both halves keeps the activations' scale
        assert torch.allclose(model(image.repeat(1, 2, 1, 1)), source_model(image), atol=1e-4)


def test_wrong_architecture_names_what_the_checkpoint_is(source_model):
    with pytest.raises(CheckpointError) as error:
        load_weights(create_model("resnet50", num_classes=10), source_model.state_dict())
    message = str(error.value)
    assert "does not fit resnet50" in message
    assert "basic-block ResNet with blocks [2, 2, 2, 2]" in message
    assert "bottleneck ResNet with blocks [3, 4, 6, 3]" in message
    assert "missing: layer1.0.conv3, layer1.0.bn3, layer1.0.downsample.0," in message  # layers, not tensors


def test_the_mismatch_describes_the_checkpoint_before_its_head_is_refitted():
    deeper = create_model("cifar_resnet56", num_classes=10).state_dict()
    with pytest.raises(CheckpointError) as error:
        load_weights(create_model("cifar_resnet20", num_classes=4), deeper)
    message = str(error.value)
    assert "it looks like a basic-block ResNet with blocks [9, 9, 9], 10 classes" in message
    assert "the model is a basic-block ResNet with blocks [3, 3, 3], 4 classes" in message
    assert "unexpected: layer1.3.conv1, layer1.3.bn1, layer1.3.conv2" in message
    assert "num_batches_tracked" not in message


def test_unknown_keys_are_reported_by_name(source_model):
    state = dict(source_model.state_dict(), **{"extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected: extra\b"):
        load_weights(create_model("resnet18", num_classes=10), state)


def test_a_checkpoint_in_torchs_legacy_pickle_format_loads(source_model, tmp_path):
    path = tmp_path / "old.pth"
    torch.save(source_model.state_dict(), path, _use_new_zipfile_serialization=False)  # before torch 1.6
    model = create_model("resnet18", num_classes=10)
    load_weights(model, path)
    assert torch.equal(model.fc.weight, source_model.fc.weight)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_reported_as_such(source_model, tmp_path, suffix):
    path = write_weights(source_model, tmp_path / f"weights{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_weights(create_model("resnet18", num_classes=10), path)


class _Payload:
    """Unpickling this would create a file: the test proves it never happens."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_weights(create_model("resnet18"), path)
    assert not marker.exists()


def _write_jpeg(path: Path) -> None:
    Image.new("RGB", (8, 8)).save(path, "JPEG")


@pytest.mark.parametrize("name, write, looks", [
    ("some_script.py", lambda path: path.write_text("import os\nprint(os.getcwd())\n"), "a text file"),
    ("photo.jpg", _write_jpeg, "a JPEG image"),
    ("weights.pth", lambda path: path.write_bytes(b""), "an empty file"),
])
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_looks_like(tmp_path, name, write, looks):
    path = tmp_path / name
    write(path)
    with pytest.raises(CheckpointError) as error:
        load_weights(create_model("resnet50"), path)
    assert str(error.value) == (f"{path} looks like {looks}, neither a PyTorch checkpoint nor a safetensors file; "
                                "give a state dict saved with torch.save (.pth, .pt) or a .safetensors file")


def test_missing_file_and_non_state_dict_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(create_model("resnet18"), tmp_path / "nope.pth")
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_weights(create_model("resnet18"), path)
