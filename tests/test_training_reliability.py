"""Nothing is lost: kill -9 and resume, failed checkpoint writes, diverging runs, bad input, torchrun."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import resnetlab.engine.trainer as trainer_module
from resnetlab.cli import build_parser, main
from resnetlab.cli.training import config_from_args
from resnetlab.config import (DataConfig, ModelConfig, OptimConfig, TrainConfig, config_from_dict, config_to_dict,
                              load_recipe, shipped_recipes)
from resnetlab.deploy.files import load_deployed
from resnetlab.engine.evaluation import evaluate_model
from resnetlab.engine.loop import TrainingDiverged
from resnetlab.engine.state import load_training_state, save_training_state
from resnetlab.engine.trainer import build_schedule, train
from resnetlab.errors import ConfigError
from subsets import cifar_subset

# The recipes shipped inside the package, each with the model it trains.
RECIPES = {"cifar10_resnet20": "cifar_resnet20", "cifar10_resnet56": "cifar_resnet56", "finetune_resnet18": "resnet18"}


@pytest.fixture(scope="module")
def cifar_small(cifar10_root, tmp_path_factory) -> Path:
    """1,000 real training images and 200 test images."""
    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("cifar1k"), train_per_class=100, test_per_class=20)


def start_training(*args: str) -> subprocess.Popen:
    """``resnetlab train *args`` in a process of its own, to be killed."""
    command = [sys.executable, "-m", "resnetlab", "train", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_9_after_the_first_checkpoint(*args: str, run_dir: Path, seconds_after: float = 0.5) -> int:
    """Start ``train *args --out run_dir`` and kill -9 it ``seconds_after`` its first checkpoint, while
    the next epoch runs. Returns the last epoch the checkpoint holds."""
    killed = start_training(*args, "--out", str(run_dir))
    metrics, state = run_dir / "metrics.jsonl", run_dir / "last.pt"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1 and state.exists()) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(seconds_after)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    return load_training_state(state)["epoch"]


def assert_same_final_weights(run_dir: Path, other_dir: Path, epochs: int) -> None:
    run, other = load_training_state(run_dir / "last.pt"), load_training_state(other_dir / "last.pt")
    assert run["epoch"] == other["epoch"] == epochs - 1
    assert run["model"].keys() == other["model"].keys()
    for key, value in run["model"].items():
        assert torch.equal(value, other["model"][key]), key


def test_kill_9_mid_epoch_then_resume_ends_with_the_weights_of_an_uninterrupted_run(cifar_small, tmp_path, caplog):
    # 4 steps of 50 images an epoch: the kill lands in the second or a later epoch, never after the last.
    common = ["--model", "cifar_resnet20", "--data", str(cifar_small), "--epochs", "4", "--batch-size", "50",
              "--max-per-class", "20", "--deterministic", "--seed", "3"]
    # Only the killed run needs a process of its own; the uninterrupted one and the resume run here.
    assert main(["train", *common, "--out", str(tmp_path / "whole")]) == 0

    done_before_kill = kill_9_after_the_first_checkpoint(*common, run_dir=tmp_path / "killed")
    assert done_before_kill < 3, "the run finished before it could be killed"

    with caplog.at_level("INFO", logger="resnetlab"):
        assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    assert f"resuming {tmp_path / 'killed'} after epoch {done_before_kill + 1}" in caplog.text

    assert_same_final_weights(tmp_path / "whole", tmp_path / "killed", epochs=4)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    epochs_logged = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs_logged == [0, 1, 2, 3]

    caplog.clear()
    with caplog.at_level("INFO", logger="resnetlab"):
        assert main(["train", "--resume", str(tmp_path / "whole")]) == 0
    assert "the run has already finished its 4 epochs; give --epochs N" in caplog.text


def test_kill_9_of_a_run_with_workers_on_photos_then_resume_ends_with_the_weights_of_an_uninterrupted_run(
        hymenoptera_root, tmp_path, caplog):
    # Photos decoded per item by 2 persistent workers, drawing every kind of random augmentation:
    # the workers' RNG states, which the kill loses, used to decide them.
    common = ["--model", "cifar_resnet20", "--data", str(hymenoptera_root), "--epochs", "3", "--batch-size", "8",
              "--max-per-class", "16", "--input-size", "32", "--augment", "imagenet", "--auto-augment", "randaugment",
              "--mixup", "0.2", "--cutmix", "1.0", "--workers", "2", "--deterministic", "--seed", "3"]
    with caplog.at_level("INFO", logger="resnetlab"):
        assert main(["train", *common, "--out", str(tmp_path / "whole")]) == 0
    assert "decoded per item, imagenet augmentation" in caplog.text

    # Soon after: its short epochs (4 steps) would otherwise finish first on a fast machine.
    done_before_kill = kill_9_after_the_first_checkpoint(*common, run_dir=tmp_path / "killed", seconds_after=0.2)
    assert done_before_kill < 2, "the run finished before it could be killed"
    assert main(["train", "--resume", str(tmp_path / "killed")]) == 0

    assert_same_final_weights(tmp_path / "whole", tmp_path / "killed", epochs=3)


def test_a_resume_may_run_longer_but_not_change_what_made_its_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(TrainConfig(out=str(run)))))
    same = TrainConfig()  # the original command again, with --resume: nothing changes
    longer = config_from_args(build_parser().parse_args([
        "train", "--resume", str(run), "--epochs", "40", "--set", "data.workers=0", "--lr", str(same.optim.lr),
        "--model", same.model.name, "--precision", "fp32", "--data", "elsewhere/cifar10"]))
    assert (longer.epochs, longer.data.workers, longer.precision, longer.data.data) == (40, 0, "fp32",
                                                                                       "elsewhere/cifar10")
    with pytest.raises(ConfigError, match=r"optim.lr \(0.1 -> 0.5\), optim.momentum \(0.9 -> 0.8\) would change "
                                          r"them: start a new run"):
        config_from_args(build_parser().parse_args(["train", "--resume", str(run), "--lr", "0.5",
                                                    "--set", "optim.momentum=0.8"]))


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_training_state(path, {"epoch": 1, "weights": torch.ones(3)})

    write_bytes = Path.write_bytes

    def disk_full(file: Path, data) -> None:
        write_bytes(file, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")  # as the kernel reports it: no file named

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left") as error:
        save_training_state(path, {"epoch": 2, "weights": torch.zeros(3)})
    assert error.value.filename == str(path)  # the file being written, for the one-line message
    monkeypatch.undo()
    assert load_training_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("failure, code, message", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/last.pt"), 2,
     "resnetlab: error: No space left on device (runs/x/last.pt); the files written before are intact; a training "
     "run continues from its last finished epoch: resnetlab train --resume RUN_DIR"),
    (KeyboardInterrupt(), 130,
     "resnetlab: interrupted; a training run continues from its last finished epoch: resnetlab train --resume RUN_DIR"),
])
def test_a_full_disk_or_ctrl_c_is_one_line_that_says_how_to_go_on(monkeypatch, capsys, failure, code, message):
    def fail(config):
        raise failure

    monkeypatch.setattr(trainer_module, "train", fail)
    assert main(["train", "--model", "cifar_resnet20"]) == code
    assert capsys.readouterr().err == message + "\n"


def test_a_diverging_run_stops_naming_step_and_lr_and_keeps_the_last_good_checkpoint(cifar_small, tmp_path):
    config = TrainConfig(model=ModelConfig(name="cifar_resnet20"),
                         data=DataConfig(data=str(cifar_small), batch_size=20, max_per_class=20),
                         epochs=1, out=str(tmp_path / "run"))
    train(config)
    good = load_training_state(tmp_path / "run" / "last.pt")
    exploding = TrainConfig(model=config.model, data=config.data, optim=OptimConfig(lr=1e12), epochs=2,
                            out=config.out, resume=True)
    with pytest.raises(TrainingDiverged, match=r"(at|by) step \d+ \(lr [0-9.e+]+\)"):
        train(exploding)
    kept = load_training_state(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == good["epoch"] == 0
    assert all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())


@pytest.mark.parametrize("data, message", [
    ("{missing}", "does not exist"),
    ("{empty_class}", "has no image files"),
])
def test_bad_data_is_one_line_before_any_training(tmp_path, capsys, data, message):
    (tmp_path / "empty_class" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty_class" / "val" / "cat").mkdir(parents=True)
    folder = data.format(missing=tmp_path / "missing", empty_class=tmp_path / "empty_class")
    code = main(["train", "--data", folder, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--resume", str(tmp_path / "never-ran")])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err


def test_the_cifar_recipe_is_the_papers_schedule_and_flags_override_it():
    args = build_parser().parse_args(["train", "--recipe", "cifar10_resnet20",
                                      "--seed", "7", "--set", "data.workers=0"])
    config = config_from_args(args)
    assert (config.model.name, config.data.batch_size, config.optim.lr) == ("cifar_resnet20", 128, 0.1)
    assert (config.optim.momentum, config.optim.weight_decay, config.max_steps) == (0.9, 1e-4, 64_000)
    assert (config.seed, config.data.workers) == (7, 0)
    schedule = build_schedule(config, steps_per_epoch=390, total_steps=64_000)
    assert [schedule(s) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "cifar10_resnet20", "--schedule", "cosine", "--milestones", "50,75"],
     "--milestones are the step schedule's decay points; this run's schedule is cosine: add --schedule step"),
    (["--optimizer", "adamw", "--momentum", "0.9"], "--momentum and --nesterov are SGD's; this run's optimizer is "
                                                     "adamw: add --optimizer sgd"),
    (["--alpha", "0.3"], "--alpha applies to distillation from a teacher: give --teacher"),
    (["--alpha", "0.5", "--temperature", "4"], "--alpha and --temperature apply to distillation from a teacher"),
])
def test_a_flag_the_run_would_not_read_is_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        config_from_args(build_parser().parse_args(["train", *flags]))


def test_unknown_recipe_keys_are_refused_with_a_suggestion(tmp_path, capsys):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("optim:\n  lr: 0.1\n  wieght_decay: 0.1\n")
    code = main(["train", "--recipe", str(recipe)])
    assert code == 2 and "unknown key 'optim.wieght_decay'; did you mean optim.weight_decay?" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--set", "optim.lr=abc"], "optim.lr must be a number, not 'abc'"),
    (["--set", "data.batch_size=abc"], "data.batch_size must be an integer, not 'abc'"),
    (["--set", "data.batch_size=true"], "data.batch_size must be an integer, not True"),
    (["--set", "schedule.milestones=[30, later]"], "schedule.milestones must be a list of numbers, not [30, 'later']"),
    (["--set", "data.val_split=3"], "data.val_split must be a string or null, not 3"),
    (["--set", "model.freeze_bn=1"], "model.freeze_bn must be true or false, not 1"),
])
def test_a_wrong_typed_value_is_refused_naming_its_key(flags, message, capsys):
    code = main(["train", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_wrong_typed_recipe_value_is_refused_naming_its_key(tmp_path, capsys):
    recipe = tmp_path / "typed.yaml"
    recipe.write_text("data:\n  batch_size: big\n")
    code = main(["train", "--recipe", str(recipe)])
    assert code == 2 and "data.batch_size must be an integer, not 'big'" in capsys.readouterr().err


def test_numbers_with_an_exponent_are_numbers_from_flags_overrides_and_recipes(tmp_path):
    recipe = tmp_path / "small_lr.yaml"
    recipe.write_text("optim:\n  weight_decay: 5e-5\n")  # YAML 1.1 alone would read these three as strings
    args = build_parser().parse_args(["train", "--recipe", str(recipe), "--lr", "1e-5",
                                      "--set", "optim.label_smoothing=1E-1"])
    config = config_from_args(args)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.label_smoothing) == (1e-5, 5e-5, 0.1)


def test_whole_numbers_and_lists_fill_float_and_tuple_fields():
    config = config_from_dict({"optim": {"lr": 1}, "schedule": {"name": "step", "milestones": [30, 60.5]}})
    assert config.optim.lr == 1 and config.schedule.milestones == (30, 60.5)


@pytest.mark.parametrize("name, model", RECIPES.items())
def test_a_shipped_recipe_is_found_by_name_from_any_folder(name, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here: the package's own copy is read
    assert load_recipe(name) == load_recipe(f"{name}.yaml")
    assert config_from_dict(load_recipe(name)).model.name == model


def test_shipped_recipes_are_the_packages_yaml_files():
    assert shipped_recipes() == sorted(RECIPES)


def test_a_shipped_recipe_given_by_its_old_path_is_named_as_it_is_now(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--recipe", "recipes/cifar10_resnet20.yaml"]) == 2
    assert "the shipped one is named without a folder: --recipe cifar10_resnet20" in capsys.readouterr().err


def test_a_missing_recipe_lists_the_shipped_ones(tmp_path, capsys):
    code = main(["train", "--recipe", str(tmp_path / "nowhere.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and ", ".join(RECIPES) in err


def test_torchrun_with_two_processes_follows_the_single_process_loss_curve(cifar_small, tmp_path, capsys):
    common = ["--model", "cifar_resnet20", "--data", str(cifar_small), "--epochs", "2", "--seed", "0",
              "--augment", "none", "--workers", "0", "--max-per-class", "50"]
    assert main(["train", *common, "--batch-size", "50", "--out", str(tmp_path / "single")]) == 0
    pair = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "resnetlab",
         "train", *common, "--batch-size", "25", "--out", str(tmp_path / "pair")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert pair.returncode == 0, pair.stderr
    assert "x 2 processes" in pair.stderr and "global batch 50" in pair.stderr

    def curve(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    single_curve, pair_curve = curve("single"), curve("pair")
    # Every process evaluated with process 0's BN statistics: the logged loss is that of the saved model.
    saved, _ = evaluate_model(load_deployed(tmp_path / "pair" / "last.safetensors"), str(cifar_small))
    assert saved.loss == pytest.approx(pair_curve[-1]["val_loss"], rel=1e-4)
    # Resumed by one process, each step would hold half the images: the run would end early.
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "pair"), "--epochs", "3"]) == 2
    assert "global batch of 50 images a step, and this resume has 25" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "pair"), "--epochs", "3", "--batch-size", "50"]) == 0
    assert [record["epoch"] for record in curve("pair")] == [0, 1, 2]  # the same global batch in one process
    assert len(single_curve) == len(pair_curve) == 2
    for one, two in zip(single_curve, pair_curve):
        assert one["step"] == two["step"] == 10 * (one["epoch"] + 1)
        # Same images in the same global batches; only BN sees half-batches under DDP.
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.05)
        assert two["val_top1"] == pytest.approx(one["val_top1"], abs=0.08)
