"""resnetlab export: each format written atomically, checked against eager, carrying its metadata."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
import warnings
from dataclasses import replace

import onnx
import onnxruntime
import pytest
import torch

import resnetlab.deploy.export as export_module
from resnetlab.deploy.runtimes import shape_checked
from resnetlab import create_model, load_model
from resnetlab.cli import main
from resnetlab.data.datasets import decode_files
from resnetlab.data.folders import scan_split
from resnetlab.deploy.files import load_deployed
from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.deploy.export import EXPORT_FORMATS, ExportSettings, export_model, read_export_metadata
from resnetlab.deploy.files import FORMAT_SUFFIXES
from resnetlab.image_input import normalize
from resnetlab.models.weights import METADATA_KEY, model_metadata
from zoo import narrow


@pytest.fixture(scope="module")
def real_images(cifar10_root):
    split = scan_split(cifar10_root / "test", 20)
    images, _, _ = decode_files(split.files, (32, 32))
    return images


def run_exported(path, fmt, images):
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    if fmt == "pt2":
        return torch._inductor.aoti_load_package(str(path))(images)
    return load_model(path).eval()(images)


@pytest.fixture(scope="module")
def pt2_export(cifar_classifier, tmp_path_factory):
    """``export --format pt2`` of the trained classifier, and what it printed: compiled once per module."""
    out = tmp_path_factory.mktemp("pt2") / "model.pt2"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--checkpoint", str(cifar_classifier), "--format", "pt2", "--out", str(out)]) == 0
    return out, printed.getvalue()


def exported_by_command(fmt, cifar_classifier, tmp_path, capsys, pt2_export):
    if fmt == "pt2":
        return pt2_export
    out = tmp_path / f"model{FORMAT_SUFFIXES[fmt]}"
    assert main(["export", "--checkpoint", str(cifar_classifier), "--format", fmt, "--out", str(out)]) == 0
    return out, capsys.readouterr().out


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_command_writes_a_file_that_predicts_like_the_checkpoint(cifar_classifier, real_images, tmp_path,
                                                                        capsys, pt2_export, fmt):
    out, printed = exported_by_command(fmt, cifar_classifier, tmp_path, capsys, pt2_export)
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


def test_a_pt2_package_runs_with_torch_alone_at_any_batch_size(pt2_export, cifar_classifier, real_images, tmp_path):
    out, _ = pt2_export
    model = load_model(cifar_classifier).eval()
    images = normalize(real_images[:13], model.preprocessing)
    torch.save(images, tmp_path / "images.pt")
    script = (f"import sys, torch; package = torch._inductor.aoti_load_package({str(out)!r}); "
              f"images = torch.load({str(tmp_path / 'images.pt')!r}); "
              f"torch.save([package(images[:1]), package(images)], {str(tmp_path / 'logits.pt')!r}); "
              "assert not [name for name in sys.modules if name.startswith('resnetlab')]")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    one, thirteen = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        expected = model(images)
    assert one.shape == (1, 10) and thirteen.shape == (13, 10)
    torch.testing.assert_close(thirteen, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(one, expected[:1], atol=1e-3, rtol=0)
    stored = torch._inductor.aoti_load_package(str(out)).get_metadata()
    assert json.loads(stored[METADATA_KEY]) == json.loads(json.dumps(model_metadata(model)))  # inside the package


def test_load_model_of_a_pt2_package_says_what_it_is(pt2_export):
    with pytest.raises(CheckpointError, match=f"{pt2_export[0]} looks like an AOTInductor package, not a "
                                              ".safetensors file written by resnetlab train"):
        load_model(pt2_export[0])


def test_a_pt2_package_for_vector_instructions_this_cpu_lacks_is_refused(pt2_export, monkeypatch):
    import torch._inductor.cpu_vec_isa as vec_isa

    compiled_for = torch._inductor.aoti_load_package(str(pt2_export[0])).get_metadata()["AOTI_CPU_ISA"]
    monkeypatch.setattr(vec_isa, "valid_vec_isa_list", lambda: [])  # a CPU without any of them
    monkeypatch.setattr(vec_isa, "pick_vec_isa", lambda: "")
    with pytest.raises(ConfigError, match=f"was compiled for CPUs with {compiled_for}; this one has no vector "
                                          "instructions: export it again on this machine"):
        load_deployed(pt2_export[0])


def test_predict_and_eval_take_a_pt2_package_as_they_take_the_weights(pt2_export, cifar_classifier, cifar10_root,
                                                                    tmp_path, capsys):
    images = sorted((cifar10_root / "test").rglob("*.jpg"))[:5]
    answers = []
    for checkpoint in (cifar_classifier, pt2_export[0]):
        assert main(["predict", "--checkpoint", str(checkpoint), "--json", *map(str, images)]) == 0
        answers.append(json.loads(capsys.readouterr().out))
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(cifar10_root), "--json",
                     "--out", str(tmp_path / checkpoint.suffix[1:])]) == 0
        answers.append(json.loads(capsys.readouterr().out)["top1"])
    weights_predictions, weights_top1, package_predictions, package_top1 = answers
    assert len(package_predictions) == 5
    assert [p["top"][0] for p in package_predictions] == [p["top"][0] for p in weights_predictions]
    assert package_top1 == pytest.approx(weights_top1, abs=1e-9)


def test_bench_measures_a_pt2_package_as_it_is_with_the_weights_top1(pt2_export, cifar_classifier, cifar10_root):
    from resnetlab.bench.run import BenchSettings, run_benchmark

    fast = dict(threads=1, warmup=1, repeats=2, batch_sizes=[1, 8], compare=[], data=str(cifar10_root))
    package_rows = run_benchmark(BenchSettings([], checkpoint=str(pt2_export[0]), **fast))
    weights_rows = run_benchmark(BenchSettings([], backends=["eager"], checkpoint=str(cifar_classifier), **fast))
    assert [(row.backend, row.batch_size) for row in package_rows] == [("aotinductor", 1), ("aotinductor", 8)]
    assert all(row.latency_ms_median > 0 and row.throughput > 0 for row in package_rows)
    assert package_rows[0].top1 == pytest.approx(weights_rows[0].top1, abs=1e-9) and package_rows[0].top1 > 0.25


def test_a_torchscript_file_of_an_earlier_version_still_loads_with_a_note(cifar_classifier, tmp_path, caplog):
    model = load_model(cifar_classifier).eval()
    old = tmp_path / "model.pt"
    with warnings.catch_warnings(), torch.no_grad():  # what export --format torchscript wrote
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
        torch.jit.save(traced, str(old), _extra_files={f"{METADATA_KEY}.json": json.dumps(model_metadata(model))})
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        deployed = load_deployed(old)
    assert [r.getMessage() for r in caplog.records] == [
        "model.pt is a TorchScript file, which PyTorch deprecates: it loads, but export the model again as "
        "--format pt2 (or onnx) to keep it running on later versions"]
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(images), model(images), atol=1e-4, rtol=0)


def test_nothing_writes_torchscript_any_more(tmp_path):
    with pytest.raises(ConfigError, match="TorchScript is deprecated in PyTorch and no longer written: export "
                                          "--format pt2"):
        export_model(create_model("cifar_resnet20"), tmp_path / "model.pt", ExportSettings("torchscript"))
    assert list(tmp_path.iterdir()) == []


def test_a_batch_the_exporter_fixed_is_caught_not_assumed_dynamic(tmp_path, monkeypatch):
    real = export_module.export_inputs
    monkeypatch.setattr(export_module, "export_inputs",  # as pytorch/pytorch#157621 reports it happening
                        lambda example, dynamic_batch: real(example[:1], dynamic_batch=False))
    with pytest.raises(ConfigError, match="the ONNX exporter fixed the batch size to 1"):
        export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_batch_is_dynamic_unless_asked_static(tmp_path):
    model = create_model("cifar_resnet20").eval()
    dynamic = export_model(model, tmp_path / "dynamic.onnx")
    assert dynamic.checked_batches == (1, 7)
    session = onnxruntime.InferenceSession(str(dynamic.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]

    static = export_model(model, tmp_path / "static.onnx", ExportSettings(static_batch=True))
    assert static.checked_batches == (1, 7)  # as resnetlab's tools run it: in batches of 1
    session = onnxruntime.InferenceSession(str(static.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    with pytest.raises(Exception):
        session.run(None, {"images": torch.randn(7, 3, 32, 32).numpy()})


def test_a_static_batch_graph_is_fed_one_image_at_a_time(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval()
    static = export_model(model, tmp_path / "static.onnx", ExportSettings(static_batch=True))
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
    with pytest.raises(ConfigError, match="unknown model format 'ONNX'; choose one of safetensors, onnx, pt2, "
                                          "torchscript"):
        load_deployed(renamed, format="ONNX")


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--out", "model.pt"], "a onnx export is a .onnx file; model.pt is not"),
    (["--format", "pt2", "--opset", "19", "--out", "model.pt2"], "--opset applies to ONNX exports only"),
    (["--format", "pt2", "--static-batch"], "--static-batch applies to ONNX exports only"),
    (["--opset", "5"], "ONNX opset 5 is not supported; choose one from 18 to 23 (default 19)"),
    (["--opset", "99"], "ONNX opset 99 is not supported; choose one from 18 to 23 (default 19)"),
    (["--opset", "0"], "ONNX opset 0 is not supported"),
])
def test_bad_export_requests_are_one_line_errors(cifar_classifier, tmp_path, capsys, argv, message):
    code = main(["export", "--checkpoint", str(cifar_classifier), *argv])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("opset", [17, 24])  # just outside the range
def test_an_opset_the_exporter_lacks_is_refused_before_exporting(tmp_path, monkeypatch, opset):
    def export(*args, **kwargs):
        raise AssertionError("the opset should have been refused before exporting")

    monkeypatch.setattr(torch.onnx, "export", export)
    with pytest.raises(ConfigError, match=f"ONNX opset {opset} is not supported; choose one from 18 to 23"):
        export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx", ExportSettings(opset=opset))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [18, 23])
def test_the_lowest_and_highest_accepted_opsets_both_export(tmp_path, opset):
    # cifar_resnet20's zero-padding shortcut slices with a stride; ONNX Runtime runs both ends of the range.
    report = export_model(create_model("cifar_resnet20"), tmp_path / "model.onnx", ExportSettings(opset=opset))
    assert report.max_abs_difference < 1e-3
    assert onnx.load(str(report.path)).opset_import[0].version == opset


def test_a_file_that_is_not_a_checkpoint_is_one_line_error(tmp_path, capsys):
    fake = tmp_path / "weights.safetensors"
    fake.write_text("not weights")
    assert main(["export", "--checkpoint", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "weights.safetensors" in err and err.strip().count("\n") == 0


def test_deformable_models_export_to_onnx_deform_conv_and_refuse_older_opsets(tmp_path):
    model = create_model("resnet18", num_classes=10, deformable=True)
    model.preprocessing = replace(model.preprocessing, input_size=64, resize_size=64)
    with pytest.raises(ConfigError, match="ONNX has DeformConv from opset 19: export this deformable model with "
                                          "--opset 19 or later, or as --format pt2"):
        export_model(model, tmp_path / "model.onnx", ExportSettings(opset=18))
    report = export_model(model, tmp_path / "model.onnx")  # checked on ONNX Runtime at batches 1 and 7
    assert report.max_abs_difference < 1e-4
    assert "DeformConv" in {node.op_type for node in onnx.load(str(report.path)).graph.node}
