"""The resnetlab command: tables for people, one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.config import TrainConfig
from resnetlab.models import save_weights


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_lists_every_architecture_with_params_and_gmacs(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    resnet50 = next(line for line in out.splitlines() if " resnet50 " in line)
    assert "25.56M" in resnet50 and "4.089" in resnet50 and "224x224" in resnet50
    assert "cifar_resnet1202" in out and "GMACs" in out and "1 MAC = 2 FLOPs" in out


def test_models_filters_by_pattern(capsys):
    _, out, _ = run(capsys, "models", "wide*")
    assert "wide_resnet50_2" in out and "resnet18 " not in out


def test_models_finds_a_network_by_its_other_name_and_shows_it(capsys):
    code, out, _ = run(capsys, "models", "seresnet5*")
    assert code == 0
    row = next(line for line in out.splitlines() if "se_resnet50 " in line)
    assert "seresnet50" in row.replace("se_resnet50", "")
    assert "se_resnet101" not in out
    assert create_model("seresnet50").arch == "se_resnet50"  # built, and saved, under resnetlab's name


def test_summary_prints_the_per_stage_table_and_totals(capsys):
    code, out, _ = run(capsys, "summary", "resnet50")
    assert code == 0
    assert "25,557,032 parameters, 4.09 GMACs (8.18 GFLOPs)" in out
    layer3 = next(line for line in out.splitlines() if "layer3" in line)
    assert "14x14" in layer3 and "512->1024" in layer3 and "7,098,368" in layer3


def test_summary_at_another_input_size(capsys):
    _, out, _ = run(capsys, "summary", "resnet50", "--input-size", "448")
    assert "at 448x448" in out and "16.35 GMACs" in out


@pytest.mark.parametrize("argv, message", [
    (["summary", "resnet51"], "unknown model 'resnet51'; did you mean resnet50"),
    (["models", "vgg*"], "no model matches 'vgg*'"),
])
def test_bad_input_is_one_line_on_stderr(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err


def test_train_help_gives_each_config_flag_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    defaults = TrainConfig()
    assert f"images per batch on each process (default {defaults.data.batch_size})" in help_text
    assert f"peak learning rate for the global batch (default {defaults.optim.lr})" in help_text
    assert f"--schedule {{cosine,step,plateau,constant}} lr decay after the warmup (default {defaults.schedule.name})" \
        in help_text
    assert "--weights WEIGHTS start from these weights: a pretrained tag (resnet18.tv_in1k; `resnetlab weights list`), a path, URL or run's .safetensors --freeze" in help_text


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "resnetlab", "summary", "cifar_resnet56"],
                            capture_output=True, text=True, check=True)
    assert "853,018 parameters" in result.stdout


@pytest.mark.parametrize("command", ["train", "eval", "predict", "embed", "explain", "quantize", "compress", "bench"])
def test_a_model_that_cannot_take_rgb_images_is_refused_in_one_line(command, tmp_path, capsys):
    checkpoint = save_weights(create_model("cifar_resnet20", num_classes=2, in_chans=1),
                              tmp_path / "gray.safetensors", class_names=["a", "b"])
    for split, name in (("train", "a"), ("train", "b"), ("val", "a"), ("val", "b")):
        (tmp_path / "data" / split / name).mkdir(parents=True)
        Image.new("L", (32, 32), 128).save(tmp_path / "data" / split / name / "0.png")
    data, image = str(tmp_path / "data"), str(tmp_path / "data" / "val" / "a" / "0.png")
    argv = {
        "train": ["train", "--model", "cifar_resnet20", "--set", "model.options.in_chans=1", "--data", data,
                  "--out", str(tmp_path / "run")],
        "eval": ["eval", "--checkpoint", str(checkpoint), "--data", data],
        "predict": ["predict", "--checkpoint", str(checkpoint), image],
        "embed": ["embed", "--checkpoint", str(checkpoint), data, "--out", str(tmp_path / "index.npz")],
        "explain": ["explain", "--checkpoint", str(checkpoint), image, "--out", str(tmp_path / "cam.png")],
        "quantize": ["quantize", "--checkpoint", str(checkpoint), "--calib", data],
        "compress": ["compress", "--checkpoint", str(checkpoint), "--data", data, "--out", str(tmp_path / "c")],
        "bench": ["bench", "--checkpoint", str(checkpoint), "--data", data],
    }[command]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.strip().count("\n") == 0
    assert "this model takes 1-channel input, and image files are read as 3-channel RGB" in err
