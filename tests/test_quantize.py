"""resnetlab quantize: INT8 from real calibration images; eval and predict take the INT8 file."""
from __future__ import annotations

import json

import pytest
import torch

from resnetlab import load_model
from resnetlab.cli import main
from resnetlab.compress.quantize import calibration_batches
from resnetlab.deployed import load_deployed
from resnetlab.engine.evaluation import evaluate_model
from resnetlab.errors import DataError
from subsets import cifar_subset

pytestmark = pytest.mark.xdist_group("quantize")


@pytest.fixture(scope="module")
def cifar_eval(cifar10_root, tmp_path_factory):
    """200 real training images to calibrate on (20 a class) and 1,000 test images (100 a class)."""
    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("cifar_q"), train_per_class=20, test_per_class=100)


@pytest.fixture(scope="module")
def int8_model(cifar_classifier, cifar_eval, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "classifier.int8.onnx"
    code = main(["quantize", "--checkpoint", str(cifar_classifier), "--calib", str(cifar_eval / "train"),
                 "--calib-images", "200", "--out", str(out)])
    assert code == 0
    return out


def test_int8_keeps_the_fp32_predictions_on_real_images(cifar_classifier, cifar_eval, int8_model):
    fp32 = load_deployed(cifar_classifier)
    int8 = load_deployed(int8_model)
    assert (int8.precision, int8.class_names, int8.preprocessing) == ("int8", fp32.class_names, fp32.preprocessing)
    fp32_result, _ = evaluate_model(fp32, str(cifar_eval))
    int8_result, _ = evaluate_model(int8, str(cifar_eval))
    assert fp32_result.count == int8_result.count == 1000
    assert abs(int8_result.top1 - fp32_result.top1) <= 0.02


def test_int8_file_is_a_quarter_of_fp32(cifar_classifier, int8_model):
    weights_bytes = 4 * sum(p.numel() for p in load_model(cifar_classifier).parameters())
    assert int8_model.stat().st_size < 0.45 * weights_bytes


def test_eval_and_predict_take_the_int8_file(int8_model, cifar_eval, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(int8_model), "--data", str(cifar_eval), "--json",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 1000 and 0.25 < metrics["top1"] <= metrics["top5"] <= 1
    images = sorted((cifar_eval / "test" / "cat").iterdir())[:2]
    assert main(["predict", "--checkpoint", str(int8_model), "--json", "-k", "2", *map(str, images)]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [len(p["top"]) for p in predictions] == [2, 2]


def test_predictions_agree_image_by_image(cifar_classifier, cifar_eval, int8_model):
    model = load_model(cifar_classifier).eval()
    batches = calibration_batches(model, cifar_eval / "test", 300)
    images = torch.cat(batches)
    with torch.no_grad():
        expected = model(images).argmax(1)
    got = load_deployed(int8_model)(images).argmax(1)
    assert (got == expected).float().mean().item() >= 0.9


def test_an_empty_calibration_folder_is_a_clear_error(cifar_classifier, tmp_path):
    model = load_model(cifar_classifier)
    with pytest.raises(DataError, match="holds no image files"):
        calibration_batches(model, tmp_path, 10)
    with pytest.raises(DataError, match="is not a folder; calibrate with a folder of real images"):
        calibration_batches(model, tmp_path / "missing", 10)


@pytest.mark.parametrize("content, suffix, message", [
    (b"not a model", ".onnx", "is not a readable onnx model"),
    (b"not a model", ".pth", "is neither a .safetensors"),
])
def test_wrong_model_files_are_one_line_errors(tmp_path, capsys, content, suffix, message, cifar_eval):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(content)
    assert main(["eval", "--checkpoint", str(bad), "--data", str(cifar_eval)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_quantize_refuses_a_checkpoint_that_is_not_a_resnetlab_model(tmp_path, cifar_eval, capsys):
    foreign = tmp_path / "torchvision_resnet18.safetensors"
    foreign.write_bytes(b"\x00" * 16)
    assert main(["quantize", "--checkpoint", str(foreign), "--calib", str(cifar_eval / "train")]) == 2
    assert "torchvision_resnet18.safetensors" in capsys.readouterr().err


def test_bench_measures_the_int8_file_as_it_is(int8_model, cifar_eval):
    from resnetlab.bench.run import run_benchmark

    rows = run_benchmark([], batch_sizes=[1, 4], checkpoint=str(int8_model), data=str(cifar_eval), threads=1,
                         warmup=1, repeats=2)
    assert [(r.backend, r.precision, r.batch_size, r.input_size) for r in rows] == [
        ("onnxruntime", "int8", 1, 32), ("onnxruntime", "int8", 4, 32)]
    assert rows[0].macs == rows[1].macs > 0 and rows[0].fraction_of_peak is None  # the peak is an fp32 figure
    assert 0.25 < rows[0].top1 == rows[1].top1 <= 1
