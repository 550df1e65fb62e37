"""resnetlab quantize: INT8 for each backend, post-training from real calibration images or after
quantization-aware training; eval, predict and bench take the INT8 file."""
from __future__ import annotations

import importlib.util
import json
import warnings
import shutil

import pytest
import torch

from resnetlab import load_model
from resnetlab.hardware import Int8Support, int8_support
from resnetlab.cli import main
from resnetlab.compress.chain import ChainSettings, check_steps
from resnetlab.compress.int8_target import int8_layout, speed_note
from resnetlab.compress.qat import finetune, fp32_distillation, prepare_qat, save_qat_model
from resnetlab.compress.quantize import (INT8_BACKENDS, calibration_batches, calibration_paths, int8_backend,
                                         int8_metadata, quantize_model)
from resnetlab.config import DataConfig, OptimConfig
from resnetlab.data.loaders import build_loaders
from resnetlab.deploy.export import exported_program, read_export_metadata, save_aoti_package
from resnetlab.deploy.files import load_deployed
from resnetlab.deploy.optimize import fold_batch_norm
from resnetlab.engine.evaluation import evaluate_model
from resnetlab.errors import ConfigError, DataError
from subsets import cifar_subset

pytestmark = pytest.mark.xdist_group("quantize")
NO_VNNI = int8_support().saturates  # this CPU adds INT8 products in 16 bits: only 7-bit weights run right here


@pytest.fixture(scope="module")
def cifar_eval(cifar10_root, tmp_path_factory):
    """200 real training images to calibrate on (20 a class) and 1,000 test images (100 a class)."""
    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("cifar_q"), train_per_class=20, test_per_class=100)


@pytest.fixture(scope="module", params=list(INT8_BACKENDS))
def int8_model(request, cifar_classifier, cifar_eval, tmp_path_factory):
    """The classifier quantized after training by ``resnetlab quantize``, once per backend: BACKEND.onnx or .pt."""
    out = tmp_path_factory.mktemp("int8") / f"{request.param}{INT8_BACKENDS[request.param]}"
    code = main(["quantize", "--checkpoint", str(cifar_classifier), "--calib", str(cifar_eval / "train"),
                 "--calib-images", "200", "--backend", request.param, "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def real_images(cifar_classifier, cifar_eval):
    """300 real test images, 30 of each class, as the classifier's input."""
    model = load_model(cifar_classifier)
    return torch.cat([torch.cat(calibration_batches(model, folder, 30))
                      for folder in sorted((cifar_eval / "test").iterdir())])


def test_calibration_images_are_spread_over_every_class(cifar_eval):
    # 50 of the 200 training images (20 a class): the first 50 files would be of three classes only.
    paths = calibration_paths(cifar_eval / "train", 50)
    assert len(set(paths)) == 50
    assert {path.parent.name for path in paths} == {folder.name for folder in (cifar_eval / "train").iterdir()}


def agreement(model, reference, images: torch.Tensor) -> float:
    """The share of ``images`` on which the two models predict the same class."""
    with torch.no_grad():
        return (model(images).argmax(1) == reference(images).argmax(1)).float().mean().item()


def in_float_arithmetic(path):
    """The INT8 file's own computation on any CPU: ONNX Runtime with no graph fusion dequantizes each
    weight and activation and runs the float kernels, where no sum can clip."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def weight_integers(path) -> list:
    """The integers of every weight an INT8 ONNX file dequantizes: stored as INT8, or quantized from a
    stored fp32 tensor by a QuantizeLinear of constants."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    integers = []
    for node in graph.node:
        inputs = [constants.get(name) for name in node.input]
        if node.op_type == "DequantizeLinear" and inputs[0] is not None and inputs[0].dtype == np.int8:
            integers.append(inputs[0])
        elif node.op_type == "QuantizeLinear" and all(value is not None for value in inputs) and inputs[0].ndim > 1:
            weight, scale, zero_point = inputs
            shape = [-1] + [1] * (weight.ndim - 1) if scale.ndim else []
            integers.append(np.rint(weight / scale.reshape(shape)) + zero_point.reshape(shape))
    return integers


def largest_weight_integer(path) -> int:
    return int(max(abs(integers.astype("int64")).max() for integers in weight_integers(path)))  # int8 -128 wraps


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("target", ["vnni", "no-vnni"])
def test_ptq_lays_weights_out_for_the_target_cpu(cifar_classifier, cifar_eval, real_images, backend, target,
                                                  tmp_path):
    model = load_model(cifar_classifier).eval()
    out = quantize_model(model, calibration_batches(model, cifar_eval / "train", 200), tmp_path / "int8.onnx",
                         backend=backend, target=target)
    int8 = load_deployed(out)
    assert read_export_metadata(out)["int8"] == {"target": target, "weight_bits": 7 if target == "no-vnni" else 8,
                                     "activation_bits": 8}
    # 7 bits: at most 64 (ONNX Runtime's reduce_range is -64..64), where 8 bits reach 127.
    assert (largest_weight_integer(out) <= 64) == (target == "no-vnni")
    in_float, as_run = agreement(in_float_arithmetic(out), model, real_images), agreement(int8, model, real_images)
    print(f"{backend} {target}: {as_run:.1%} of fp32's predictions as run here, {in_float:.1%} in float")  # -s
    assert in_float >= 0.9  # what the file computes, on any CPU
    if target == "no-vnni" or not NO_VNNI:  # the runtime's integer kernels, on a CPU the file is for
        assert as_run >= 0.9


def test_int8_keeps_the_fp32_predictions_on_real_images(cifar_classifier, cifar_eval, int8_model):
    fp32 = load_deployed(cifar_classifier)
    int8 = load_deployed(int8_model)
    assert (int8.precision, int8.class_names, int8.preprocessing) == ("int8", fp32.class_names, fp32.preprocessing)
    assert int8.backend == int8_model.stem
    fp32_result, _ = evaluate_model(fp32, str(cifar_eval))
    int8_result, _ = evaluate_model(int8, str(cifar_eval))
    assert fp32_result.count == int8_result.count == 1000
    assert abs(int8_result.top1 - fp32_result.top1) <= 0.02


def test_int8_file_is_a_quarter_of_fp32(cifar_classifier, int8_model, tmp_path):
    model = load_model(cifar_classifier).eval()
    weights_bytes = 4 * sum(p.numel() for p in model.parameters())
    if int8_model.suffix == ".onnx":
        assert int8_model.stat().st_size < 0.45 * weights_bytes
        return
    # An AOTInductor package is mostly compiled code (2 MB for cifar_resnet20's 1 MB of weights), the same
    # for fp32 and INT8: the INT8 weights show as what the package saves on the fp32 one of the same model.
    save_aoti_package(exported_program(model, torch.randn(1, 3, 32, 32)), tmp_path / "fp32.pt2", {})
    assert int8_model.stat().st_size < (tmp_path / "fp32.pt2").stat().st_size - 0.25 * weights_bytes


def test_eval_and_predict_take_the_int8_file(int8_model, cifar_eval, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(int8_model), "--data", str(cifar_eval), "--json",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 1000 and 0.25 < metrics["top1"] <= metrics["top5"] <= 1
    images = sorted((cifar_eval / "test" / "cat").iterdir())[:2]
    assert main(["predict", "--checkpoint", str(int8_model), "--json", "-k", "2", *map(str, images)]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [len(p["top"]) for p in predictions] == [2, 2]


def test_predictions_agree_image_by_image(cifar_classifier, real_images, int8_model):
    assert agreement(load_deployed(int8_model), load_model(cifar_classifier).eval(), real_images) >= 0.9


@pytest.fixture(scope="module", params=["no-vnni", "vnni"])
def qat_prepared(request, cifar_classifier, cifar_eval):
    """The classifier fake-quantized for ONNX with the target CPU's weight bits, and fine-tuned for
    3 epochs on 200 real training images: (target, fp32 model, fake-quant model, epoch losses)."""
    torch.manual_seed(0)
    model = load_model(cifar_classifier).eval()
    loader, _, _ = build_loaders(DataConfig(data=str(cifar_eval), batch_size=50), model.preprocessing)
    prepared = prepare_qat(model, "onnxruntime", int8_layout("onnxruntime", request.param),
                           torch.randn(1, 3, 32, 32))
    losses = finetune(prepared, loader, 3, OptimConfig(lr=1e-3), fp32_distillation(model))
    return request.param, model, prepared, losses


def test_qat_fine_tune_trains_every_weight_and_bias(qat_prepared):
    _, model, prepared, losses = qat_prepared
    before = dict(fold_batch_norm(model).named_parameters())
    changed = [name for name, weight in prepared.named_parameters() if not torch.equal(weight, before[name])]
    assert sorted(changed) == sorted(before)  # the folded BN shifts too, not only the weights
    assert len(losses) == 3 and all(0 <= loss < 0.1 for loss in losses)  # near fp32 throughout, never diverging


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_qat_onnx_file_keeps_the_learned_scales(qat_prepared, real_images, cifar_classifier, backend, tmp_path):
    target, model, prepared, _ = qat_prepared
    layout = int8_layout(backend, target)
    out = save_qat_model(prepared, torch.randn(1, 3, 32, 32), tmp_path / "qat.onnx", backend,
                         int8_metadata(model, backend, layout))
    int8 = load_deployed(out)
    assert (int8.backend, int8.precision, read_export_metadata(out)["int8"]["target"]) == (backend, "int8", target)
    # The weights keep the range they were trained in: -64..63 for CPUs without VNNI, -128..127 with.
    assert largest_weight_integer(out) in (-layout.weight_range[0] - 1, -layout.weight_range[0])
    assert agreement(in_float_arithmetic(out), prepared, real_images) >= 0.95  # the file computes what was trained
    if target == "no-vnni" or not NO_VNNI:  # and the runtime's integer kernels do, on a CPU it is for
        assert agreement(int8, prepared, real_images) >= 0.95
        assert agreement(int8, model, real_images) >= 0.9
    weights_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert out.stat().st_size < 0.45 * weights_bytes  # weights stored as INT8


def test_onnx_runtime_runs_the_qat_file_with_int8_kernels(qat_prepared, tmp_path):
    import onnx
    import onnxruntime

    target, model, prepared, _ = qat_prepared
    out = save_qat_model(prepared, torch.randn(1, 3, 32, 32), tmp_path / "qat.onnx", "onnxruntime",
                         int8_metadata(model, "onnxruntime", int8_layout("onnxruntime", target)))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "as_run.onnx")
    onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "as_run.onnx")).graph.node]
    assert ops.count("QLinearConv") == 19 and "Conv" not in ops  # cifar_resnet20's 19 convolutions, all INT8
    assert ops.count("QLinearAdd") == 9 and "Add" not in ops  # and its 9 residual additions


def test_qat_on_the_command_line_for_x86(cifar_classifier, cifar_eval, real_images, tmp_path, capsys):
    out = tmp_path / "classifier.qat.pt2"
    assert main(["quantize", "--checkpoint", str(cifar_classifier), "--method", "qat", "--backend", "x86",
                 "--data", str(cifar_eval), "--epochs", "1", "--batch-size", "50", "--out", str(out)]) == 0
    assert "INT8 (PyTorch x86)" in capsys.readouterr().out
    int8 = load_deployed(out)
    assert (int8.format, int8.backend, int8.precision) == ("pt2", "x86", "int8")
    assert agreement(int8, load_model(cifar_classifier).eval(), real_images) >= 0.9


@pytest.mark.parametrize("options, message", [
    (["--method", "qat"], "--method qat fine-tunes on real images: give --data DIR"),
    ([], "--method ptq calibrates on real images: give --calib DIR"),
    (["--calib", "CALIB", "--backend", "x86", "--out", "model.onnx"],
     "--backend x86 writes an AOTInductor package: give --out a path ending in .pt2, not model.onnx"),
    (["--calib", "CALIB", "--backend", "openvino", "--out", "model.pt"],
     "--backend openvino writes an ONNX file: give --out a path ending in .onnx"),
    (["--calib", "CALIB", "--backend", "openvino", "--calibration", "entropy"],
     "--calibration chooses ONNX Runtime's range method"),
    (["--calib", "CALIB", "--epochs", "2"], "--epochs set the fine-tune of --method qat"),
    (["--method", "qat", "--data", "DATA", "--calib", "CALIB"], "--calibration are for --method ptq"),
    (["--method", "qat", "--data", "DATA", "--calib-images", "256"], "--calibration are for --method ptq"),
])
def test_wrong_quantize_options_are_one_line_errors(cifar_classifier, cifar_eval, tmp_path, capsys, options,
                                                    message):
    options = [{"CALIB": str(cifar_eval / "train"), "DATA": str(cifar_eval)}.get(option, option)
               for option in options]
    options = [str(tmp_path / option) if option.startswith("model.") else option for option in options]
    assert main(["quantize", "--checkpoint", str(cifar_classifier), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_a_backend_that_is_not_installed_is_named_with_its_install_command(cifar_classifier, cifar_eval,
                                                                           monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "nncf" else
                        find_spec(name, *rest))
    assert main(["quantize", "--checkpoint", str(cifar_classifier), "--calib", str(cifar_eval / "train"),
                 "--backend", "openvino"]) == 2
    assert "--backend openvino needs nncf: pip install nncf" in capsys.readouterr().err


def test_unreadable_calibration_files_are_skipped_and_counted(cifar_classifier, cifar_eval, tmp_path, caplog):
    for image in sorted((cifar_eval / "train").rglob("*.jpg"))[:3]:
        shutil.copy(image, tmp_path / image.name)
    (tmp_path / "notes.jpg").write_text("not an image")
    with caplog.at_level("WARNING", logger="resnetlab"):
        batches = calibration_batches(load_model(cifar_classifier), tmp_path, 10)
    assert sum(len(batch) for batch in batches) == 3
    assert "calibrating on 3 images: 1 of the files under" in caplog.text and "notes.jpg" in caplog.text


def test_an_empty_calibration_folder_is_a_clear_error(cifar_classifier, tmp_path):
    model = load_model(cifar_classifier)
    with pytest.raises(DataError, match="holds no image files"):
        calibration_batches(model, tmp_path, 10)
    with pytest.raises(DataError, match="is not a folder; calibrate with a folder of real images"):
        calibration_batches(model, tmp_path / "missing", 10)


def _torch_save(path):
    torch.save({"model": {}}, path)  # a training state such as last.pt, not TorchScript


def _torchscript_without_metadata(path):
    with warnings.catch_warnings():  # an earlier version's kind of file, made the deprecated way it was
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path))


def _run_folder(path):
    path.mkdir()
    (path / "best.safetensors").write_bytes(b"")


@pytest.mark.parametrize("write, suffix, message", [
    (lambda path: path.write_bytes(b"not a model"), ".onnx", "is not a readable onnx model"),
    (lambda path: path.write_bytes(b"not a model"), ".pt2", "is not an AOTInductor package"),
    (lambda path: path.write_bytes(b"not a model"), ".pth", "is neither a .safetensors"),
    (lambda path: path.write_bytes(b"not a model"), ".pt", "is not a TorchScript model"),
    (_torch_save, ".pt", "is not a TorchScript model"),
    (_torchscript_without_metadata, ".pt", "carries no resnetlab metadata"),
    (_run_folder, "", "model is a folder; give a model file, e.g. "),
])
def test_wrong_model_files_are_one_line_errors(tmp_path, capsys, write, suffix, message, cifar_eval):
    bad = tmp_path / f"model{suffix}"
    write(bad)
    assert main(["eval", "--checkpoint", str(bad), "--data", str(cifar_eval)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
    if bad.is_dir():  # the model files in it are named
        assert str(bad / "best.safetensors") in err


def test_quantize_refuses_a_checkpoint_that_is_not_a_resnetlab_model(tmp_path, cifar_eval, capsys):
    foreign = tmp_path / "torchvision_resnet18.safetensors"
    foreign.write_bytes(b"\x00" * 16)
    assert main(["quantize", "--checkpoint", str(foreign), "--calib", str(cifar_eval / "train")]) == 2
    assert "torchvision_resnet18.safetensors" in capsys.readouterr().err


def test_bench_measures_the_int8_file_as_it_is(int8_model, cifar_eval):
    from resnetlab.bench.run import BenchSettings, run_benchmark

    rows = run_benchmark(BenchSettings([], batch_sizes=[1, 4], checkpoint=str(int8_model), data=str(cifar_eval), threads=1,
                         warmup=1, repeats=2))
    backend = int8_model.stem
    assert [(r.backend, r.precision, r.batch_size, r.input_size) for r in rows] == [
        (backend, "int8", 1, 32), (backend, "int8", 4, 32)]
    assert rows[0].macs == rows[1].macs > 0 and rows[0].fraction_of_peak is None  # the peak is an fp32 figure
    assert 0.25 < rows[0].top1 == rows[1].top1 <= 1


WITH_VNNI = Int8Support("AVX-512 VNNI", False, "this CPU has AVX-512 VNNI")
WITHOUT_VNNI = Int8Support(None, True, "this CPU has no VNNI")


@pytest.mark.parametrize("cpu, target, weight_bits", [
    (WITH_VNNI, "auto", 8), (WITHOUT_VNNI, "auto", 7),  # auto: the kind of CPU it is made on
    (WITHOUT_VNNI, "vnni", 8), (WITH_VNNI, "no-vnni", 7),  # forced: for a CPU of the other kind
])
def test_the_int8_layout_follows_the_target_cpu(cpu, target, weight_bits):
    for backend in ("onnxruntime", "openvino"):
        layout = int8_layout(backend, target, cpu)
        assert (layout.weight_bits, layout.activation_bits) == (weight_bits, 8)
        assert layout.target == ("no-vnni" if weight_bits == 7 else "vnni")
    # A VNNI file made on a CPU without VNNI says, in its one line, that it would clip here.
    assert ("can clip" in int8_layout("onnxruntime", target, cpu).summary) == (cpu is WITHOUT_VNNI and
                                                                                weight_bits == 8)
    x86 = int8_layout("x86", target, cpu)  # PyTorch's own settings do not clip on any CPU
    assert (x86.weight_bits, x86.activation_bits) == (8, 7)


def test_an_unknown_int8_target_is_refused():
    with pytest.raises(ConfigError, match="unknown INT8 target 'avx'; choose one of auto, vnni, no-vnni"):
        int8_layout("onnxruntime", "avx", WITH_VNNI)
    with pytest.raises(ConfigError, match="unknown INT8 target 'avx'"):  # before any pruning or training
        check_steps(["prune", "quantize"], ChainSettings(int8_target="avx"))
    with pytest.raises(ConfigError, match="--int8-target applies to the quantize step"):
        check_steps(["prune"], ChainSettings(int8_target="vnni"))


def test_x86_int8_target_is_refused_as_it_changes_nothing(cifar_classifier, cifar_eval, tmp_path, capsys):
    assert main(["quantize", "--checkpoint", str(cifar_classifier), "--calib", str(cifar_eval / "train"),
                 "--backend", "x86", "--int8-target", "vnni", "--out", str(tmp_path / "int8.pt2")]) == 2
    assert "--backend x86 keeps PyTorch's own settings, right on every CPU" in capsys.readouterr().err


def test_int8_that_does_not_pay_says_why_on_a_cpu_without_vnni():
    note = speed_note(int8_ms=10.0, fp32_ms=11.0, int8_mb=1.0, fp32_mb=4.0, runtime="ONNX Runtime", cpu=WITHOUT_VNNI)
    assert note.startswith("this CPU has no VNNI: INT8 runs 1.10x fp32 on ONNX Runtime here")
    assert "makes the file 4.0x smaller" in note
    assert speed_note(10.0, 20.0, 1.0, 4.0, "ONNX Runtime", WITHOUT_VNNI) is None  # 2x pays: nothing to explain
    assert speed_note(10.0, 11.0, 1.0, 4.0, "ONNX Runtime", WITH_VNNI) is None  # slow for another reason


def test_quantize_prints_and_records_the_cpus_it_is_for(cifar_classifier, cifar_eval, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    assert main(["quantize", "--checkpoint", str(cifar_classifier), "--calib", str(cifar_eval / "train"),
                 "--calib-images", "32", "--int8-target", "no-vnni", "--out", str(out)]) == 0
    assert "INT8 for every CPU: 7-bit weights" in capsys.readouterr().out
    assert read_export_metadata(out)["int8"]["weight_bits"] == 7


@pytest.mark.parametrize("openvino_installed", [True, False])
def test_the_default_backend_is_the_fastest_int8_runtime_for_the_target_cpus(monkeypatch, openvino_installed):
    find_spec, missing = importlib.util.find_spec, set() if openvino_installed else {"openvino", "nncf"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name in missing else
                        find_spec(name, *rest))
    # Without VNNI, OpenVINO's INT8 ran resnet50 in 43 ms, ONNX Runtime's in 80 (BENCHMARKS.md).
    assert int8_backend("auto", target="no-vnni") == ("openvino" if openvino_installed else "onnxruntime")
    assert int8_backend("auto", target="vnni") == "onnxruntime"
    assert int8_backend("auto", "entropy", "no-vnni") == "onnxruntime"  # the one that takes a range method
    assert int8_backend("x86", target="no-vnni") == "x86"  # a backend given is kept
