"""resnetlab compress: prune -> distill -> quantize -> export, each step re-measured in one report."""
from __future__ import annotations

import dataclasses
import json

import pytest

from resnetlab.cli import main
from resnetlab.compress.chain import SETTING_USERS, STEPS, ChainSettings, check_steps, compress
from resnetlab.deploy.files import load_deployed
from resnetlab.errors import ConfigError
from resnetlab.models import load_model
from subsets import cifar_subset

QUICK = ChainSettings(epochs=1, batch_size=32, calib_images=64, lr=0.02)


@pytest.fixture(scope="module")
def small_cifar(cifar10_root, tmp_path_factory):
    """500 real training images (50 a class) and 500 test images."""
    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("cifar_c"), train_per_class=50, test_per_class=50)


def test_the_whole_chain_records_every_step(cifar_classifier, small_cifar, tmp_path, capsys):
    out = tmp_path / "chain"
    assert main(["compress", "--checkpoint", str(cifar_classifier), "--data", str(small_cifar), "--out", str(out),
                 "--epochs", "1", "--batch-size", "32", "--calib-images", "64", "--prune-stream"]) == 0
    assert "original -> prune -> distill -> quantize -> export" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [r["step"] for r in report] == ["original", "prune (before training)", "distill", "quantize", "export"]
    original, pruned, distilled, quantized, exported = report
    assert pruned["macs"] <= 0.5 * original["macs"] and distilled["macs"] == pruned["macs"] == quantized["macs"]
    assert distilled["params"] < original["params"] and quantized["params"] is None
    assert load_model(distilled["path"]).config.stream_channels is not None  # --prune-stream: the stream too
    assert quantized["megabytes"] < 0.5 * distilled["megabytes"]
    assert exported["path"].endswith("4-export/model.onnx") and exported["top1"] == quantized["top1"]
    assert all(0 <= r["top1"] <= 1 and r["latency_ms"] > 0 for r in report)
    final = load_deployed(exported["path"])  # the deployable file: INT8, with its labels and preprocessing
    assert final.precision == "int8" and final.class_names == load_deployed(cifar_classifier).class_names


def test_distill_alone_trains_the_named_student(cifar_classifier, small_cifar, tmp_path):
    records = compress(cifar_classifier, str(small_cifar), ["distill"], tmp_path / "kd",
                       ChainSettings(student="cifar_resnet20", epochs=1, batch_size=32))
    assert [r.step for r in records] == ["original", "distill"]
    # The data holds out test/ only: the last epoch is kept, not the one the test set liked best.
    assert records[1].path.endswith("1-distill/last.safetensors")


@pytest.mark.parametrize("steps, settings, message", [
    (["prune", "shrink"], QUICK, "unknown compression step(s) shrink"),
    (["prune", "prune"], QUICK, "each step runs once"),
    (["distill"], QUICK, "distill without prune needs --student NAME"),
    (["prune"], ChainSettings(target_macs=2.0), "target MACs is a fraction of the model's"),
    (["prune"], ChainSettings(channel_multiple=0), "round to a multiple of at least 1, not 0"),
    (["prune", "distill"], ChainSettings(student="cifar_resnet20"), "--student is for distill without prune"),
    (["quantize", "export"], ChainSettings(channel_multiple=16),
     "--round-to applies to the prune step, which --steps quantize,export leaves out"),
    (["export"], ChainSettings(precision="bf16"), "--precision applies to the prune and distill steps"),
    (["prune"], ChainSettings(temperature=2.0), "--temperature applies to the distill step"),
    (["quantize"], ChainSettings(keep_stream=False), "--prune-stream applies to the prune step"),
    (["distill"], ChainSettings(student="cifar_resnet20", calib_images=64), "--calib-images applies to the quantize"),
    (["prune"], ChainSettings(epochs=0, precision="bf16"), "--precision applies to training, and with 0 epochs"),
])
def test_bad_chains_are_refused_before_any_work(steps, settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_steps(steps, settings)


def test_every_chain_setting_names_the_steps_that_read_it():
    assert set(SETTING_USERS) == {field.name for field in dataclasses.fields(ChainSettings)}
    assert all(set(users) <= set(STEPS) for _, users in SETTING_USERS.values())


def test_steps_run_in_the_chain_order_whatever_order_they_are_given():
    assert check_steps(["export", "quantize", "prune"], QUICK) == ["prune", "quantize", "export"]


@pytest.mark.parametrize("steps", [["prune"], ["quantize"], ["export"], ["distill", "--student", "cifar_resnet20"]])
def test_the_command_defaults_pass_the_settings_check_for_each_step_alone(steps, tmp_path, capsys):
    missing = tmp_path / "missing.safetensors"  # the settings are checked first, then the checkpoint is read
    assert main(["compress", "--checkpoint", str(missing), "--data", str(tmp_path), "--out", str(tmp_path / "c"),
                 "--steps", *steps]) == 2
    assert f"weights file {missing} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("round_to", [16, ChainSettings.channel_multiple])  # the default too: it was given
def test_a_flag_for_a_step_left_out_is_a_one_line_error(tmp_path, capsys, round_to):
    assert main(["compress", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "c"), "--steps", "quantize", "--round-to", str(round_to)]) == 2
    assert capsys.readouterr().err.strip() == ("resnetlab: error: --round-to applies to the prune step, which "
                                               "--steps quantize leaves out")


def test_prune_without_fine_tuning_refuses_a_training_flag_even_at_its_default(tmp_path, capsys):
    assert main(["prune", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", str(tmp_path),
                 "--finetune-epochs", "0", "--lr", str(ChainSettings.lr)]) == 2
    assert "--lr applies to training, and with 0 epochs" in capsys.readouterr().err
