"""resnetlab export: each format written atomically, checked against eager, carrying its metadata."""
from __future__ import annotations

from dataclasses import replace

import onnx
import onnxruntime
import pytest
import torch

import resnetlab.export as export_module
from resnetlab.runtimes import shape_checked
from resnetlab import create_model, load_model
from resnetlab.cli import main
from resnetlab.data.datasets import decode_files
from resnetlab.data.folders import scan_split
from resnetlab.deployed import load_deployed
from resnetlab.errors import ConfigError
from resnetlab.export import export_model, read_export_metadata
from resnetlab.image_input import normalize
from zoo import narrow

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


@pytest.fixture(scope="module")
def real_images(cifar10_root):
    split = scan_split(cifar10_root / "test", 20)
    images, _, _ = decode_files(split.files, (32, 32))
    return images


def run_exported(path, fmt, images):
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(images)
    return load_model(path).eval()(images)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_command_writes_a_file_that_predicts_like_the_checkpoint(cifar_classifier, real_images, tmp_path,
                                                                        capsys, fmt):
    out = tmp_path / f"model{SUFFIX[fmt]}"
    assert main(["export", "--checkpoint", str(cifar_classifier), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "on batches of 1 and 7" in printed

    model = load_model(cifar_classifier).eval()
    images = normalize(real_images, model.preprocessing)  # 200 real CIFAR-10 test images
    with torch.no_grad():
        expected = model(images)
        got = run_exported(out, fmt, images)
    assert (got - expected).abs().max().item() < 1e-3
    assert torch.equal(got.argmax(1), expected.argmax(1))

    metadata = read_export_metadata(out)  # the preprocessing and labels travel with the file
    assert metadata["arch"] == "cifar_resnet20"
    assert metadata["class_names"] == model.class_names
    assert metadata["preprocessing"]["input_size"] == 32
    assert metadata["preprocessing"]["mean"] == list(model.preprocessing.mean)


def test_onnx_batch_is_dynamic_unless_asked_static(tmp_path):
    model = create_model("cifar_resnet20").eval()
    dynamic = export_model(model, tmp_path / "dynamic.onnx")
    assert dynamic.checked_batches == (1, 7)
    session = onnxruntime.InferenceSession(str(dynamic.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]

    static = export_model(model, tmp_path / "static.onnx", dynamic_batch=False)
    assert static.checked_batches == (1, 7)  # as resnetlab's tools run it: in batches of 1
    session = onnxruntime.InferenceSession(str(static.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    with pytest.raises(Exception):
        session.run(None, {"images": torch.randn(7, 3, 32, 32).numpy()})


def test_a_static_batch_graph_is_fed_one_image_at_a_time(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval()
    static = export_model(model, tmp_path / "static.onnx", dynamic_batch=False)
    images = torch.randn(5, 3, 32, 32)  # as evaluate, predict, bench and serve pass them
    with torch.no_grad():
        torch.testing.assert_close(load_deployed(static.path)(images), model(images), atol=1e-3, rtol=0)


def test_a_fixed_batch_that_does_not_divide_the_images_is_refused():
    graph_batches = []
    run = shape_checked(lambda images: graph_batches.append(len(images)) or images, [4, 3, 8, 8])
    assert run(torch.zeros(8, 3, 8, 8)).shape == (8, 3, 8, 8) and graph_batches == [4, 4]
    with pytest.raises(ConfigError, match="takes batches of exactly 4 images, not 6"):
        run(torch.zeros(6, 3, 8, 8))


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "se_resnet50", "preact_resnet18",
                                  "preact_resnet50", "res2net50_26w_4s", "resnest14d", "ecaresnet26t", "resnetblur18",
                                  "skresnet18"])
def test_each_block_type_exports_to_onnx(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **narrow(name))  # the structure is what exports or not
    model.preprocessing = replace(model.preprocessing, input_size=64, resize_size=64)
    report = export_model(model, tmp_path / f"{name}.onnx")
    assert report.max_abs_difference < 1e-3 and report.bytes > 4 * sum(p.numel() for p in model.parameters()) * 0.99


def test_a_failed_check_leaves_no_file_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(ConfigError, match="differs from the eager one"):
        export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_loader_export_checks_with_reads_a_graph_under_any_name_given_its_format(tmp_path):
    path = export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx").path
    renamed = path.rename(tmp_path / "model.onnx.partial")  # as the check sees its temporary file
    assert load_deployed(renamed, format="onnx").arch == "cifar_resnet20"
    with pytest.raises(ConfigError, match="unknown model format 'ONNX'; choose one of safetensors, onnx, torchscript"):
        load_deployed(renamed, format="ONNX")


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--out", "model.pt"], "a onnx export is a .onnx file; model.pt is not"),
    (["--format", "torchscript", "--opset", "19", "--out", "model.pt"],
     "--opset applies to ONNX exports only"),
    (["--opset", "5"], "ONNX opset 5 is not supported; choose one from 10 to 20 (default 17)"),
    (["--opset", "99"], "ONNX opset 99 is not supported; choose one from 10 to 20 (default 17)"),
    (["--opset", "0"], "ONNX opset 0 is not supported"),
])
def test_bad_export_requests_are_one_line_errors(cifar_classifier, tmp_path, capsys, argv, message):
    code = main(["export", "--checkpoint", str(cifar_classifier), *argv])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("opset", [9, 21])  # just outside the range
def test_an_opset_the_exporter_lacks_is_refused_before_exporting(tmp_path, monkeypatch, opset):
    def export(*args, **kwargs):
        raise AssertionError("the opset should have been refused before exporting")

    monkeypatch.setattr(torch.onnx, "export", export)
    with pytest.raises(ConfigError, match=f"ONNX opset {opset} is not supported; choose one from 10 to 20"):
        export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [10, 20])
def test_the_lowest_and_highest_accepted_opsets_both_export(tmp_path, opset):
    # cifar_resnet20's zero-padding shortcut slices with a stride: the op that sets the minimum.
    report = export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx", opset=opset)
    assert report.max_abs_difference < 1e-3
    assert onnx.load(str(report.path)).opset_import[0].version == opset


def test_a_file_that_is_not_a_checkpoint_is_one_line_error(tmp_path, capsys):
    fake = tmp_path / "weights.safetensors"
    fake.write_text("not weights")
    assert main(["export", "--checkpoint", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "weights.safetensors" in err and err.strip().count("\n") == 0


def test_deformable_models_refuse_onnx_and_export_to_torchscript(tmp_path):
    model = create_model("resnet18", num_classes=10, deformable=True)
    with pytest.raises(ConfigError, match="no converter for torchvision's deform_conv2d"):
        export_model(model, tmp_path / "model.onnx")
    model.preprocessing = replace(model.preprocessing, input_size=64, resize_size=64)
    assert export_model(model, tmp_path / "model.pt", "torchscript").max_abs_difference < 1e-4
