"""`make demo`: the packaged real CIFAR-10 subset, trained on, evaluated and predicted from, end to end."""
from __future__ import annotations

import re

from resnetlab.cli import main
from resnetlab.deploy.files import load_deployed


def test_demo_trains_evaluates_and_predicts_on_the_packaged_images(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    (run_dir,) = tmp_path.glob("run-*")
    model = load_deployed(run_dir / "best.safetensors")
    assert model.arch == "cifar_resnet20" and len(model.class_names) == 10
    assert len(list((tmp_path / "cifar10-mini" / "train").glob("*/*.jpg"))) == 5000
    # The three sample predictions name a class each, most probable first
    lines = [line for line in printed.splitlines() if re.search(r"test/(cat|ship|truck)/0000\.jpg: ", line)]
    assert len(lines) == 3
    for line in lines:
        label = line.split(": ", 1)[1].split()[0]
        assert label in model.class_names
    assert "resnetlab quantize --checkpoint" in printed
