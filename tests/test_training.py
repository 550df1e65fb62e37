"""The training engine on real CIFAR-10 images: accuracy, artefacts, evaluation, prediction."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from resnetlab import create_model, load_model
from resnetlab.cli import main
from resnetlab.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, config_from_dict
from resnetlab.deploy.files import load_deployed
from resnetlab.engine.evaluation import evaluate_model
from resnetlab.engine.trainer import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# conftest's source_run: trained once, on the worker that also fine-tunes it in test_transfer.
pytestmark = pytest.mark.xdist_group("source_run")
SOURCE_NAMES = ["airplane", "bird", "cat", "frog", "ship"]


def test_cifar_resnet20_learns_real_cifar10_well_above_chance(source_run):
    _, result = source_run
    assert result.data.num_train == 5000 and result.data.num_val == 500
    # Chance is 20%; these 3 epochs on 5,000 images of five classes reached 53% on the Zen 3 host.
    assert result.best_top1 >= 0.45


def test_a_run_leaves_its_config_manifest_metrics_and_curves(source_run):
    config, result = source_run
    run_dir = result.run_dir
    reloaded = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert reloaded == config  # so `--recipe RUN_DIR/config.yaml` re-runs it

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["data"]["file_list_sha256"] == result.data.file_list_hash
    assert manifest["data"]["file_list_sha256"].startswith("sha256:")
    assert manifest["config"]["model"]["name"] == "cifar_resnet20"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert max(r["val_top1"] for r in records) == pytest.approx(result.best_top1)
    assert (run_dir / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    best = load_model(run_dir / "best.safetensors")
    assert best.class_names == SOURCE_NAMES


def test_eval_command_agrees_with_training_and_writes_the_confusion_matrix(source_run, source_half, tmp_path,
                                                                          capsys):
    _, result = source_run
    code = main(["eval", "--checkpoint", str(result.run_dir / "best.safetensors"), "--data", str(source_half),
                 "--out", str(tmp_path), "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 500
    assert metrics["top1"] == pytest.approx(result.best_top1)
    assert 0 < metrics["top1"] <= metrics["top5"] <= 1
    rows = (tmp_path / "confusion.csv").read_text().splitlines()
    assert rows[0].split(",")[1:] == list(result.data.class_names) == SOURCE_NAMES and len(rows) == 6
    counts = [[int(v) for v in row.split(",")[1:]] for row in rows[1:]]
    assert [sum(row) for row in counts] == [100] * 5
    assert sum(counts[i][i] for i in range(5)) == round(metrics["top1"] * 500)
    assert (tmp_path / "confusion.png").read_bytes().startswith(PNG_SIGNATURE)


def test_predict_gives_ranked_labels_and_skips_unreadable_files(source_run, source_half, tmp_path, capsys):
    _, result = source_run
    images = sorted((source_half / "test" / "ship").iterdir())[:3]
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    code = main(["predict", "--checkpoint", str(result.run_dir / "best.safetensors"), "--json", "-k", "3",
                 *map(str, images), str(fake)])
    captured = capsys.readouterr()
    assert code == 0
    predictions = json.loads(captured.out)
    assert [p["path"] for p in predictions] == list(map(str, images))
    for prediction in predictions:
        probabilities = [t["probability"] for t in prediction["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    assert "notes.jpg is not a readable image" in captured.err

    model = load_model(result.run_dir / "best.safetensors").eval()
    from resnetlab.image_input import normalize, read_crop
    with torch.no_grad():
        logits = model(normalize(read_crop(images[0], model.preprocessing), model.preprocessing)[None])
    assert predictions[0]["top"][0]["label"] == model.class_names[logits.argmax().item()]


def test_training_refuses_to_overwrite_a_run(source_run):
    config, _ = source_run
    with pytest.raises(Exception, match="already holds a run; continue it with --resume"):
        train(config)


def test_fine_tuning_on_real_photos_of_many_sizes(hymenoptera_root, tmp_path, caplog):
    """Ants vs bees: real photos of many sizes and a palette image; a 1000-class start, a new head."""
    torch.manual_seed(0)
    start = create_model("resnet18")  # stands in for ImageNet weights, which need the network
    weights = tmp_path / "resnet18-imagenet-layout.pth"
    torch.save(start.state_dict(), weights)
    config = TrainConfig(
        model=ModelConfig(name="resnet18", weights=str(weights), freeze="stages:1"),
        data=DataConfig(data=str(hymenoptera_root), batch_size=32, input_size=64, workers=2),
        optim=OptimConfig(lr=0.01, backbone_lr_scale=0.1), epochs=1, out=str(tmp_path / "run"))
    with caplog.at_level("INFO", logger="resnetlab"):
        result = train(config)
    assert "re-initialised" in caplog.text
    assert (result.data.num_train, result.data.num_val, result.data.bad_files) == (245, 153, ())
    assert result.data.class_names == ("ants", "bees")
    assert 0.0 <= result.best_top1 <= 1.0 and "val top-1" in caplog.text

    tuned = load_model(result.run_dir / "last.safetensors")
    # The stem and the first stage were frozen: exactly the starting weights, BN statistics included.
    for key, value in start.state_dict().items():
        if key.startswith(("conv1.", "bn1.", "layer1.")):
            assert torch.equal(tuned.state_dict()[key], value), key
    assert not torch.equal(tuned.state_dict()["layer4.1.conv2.weight"], start.state_dict()["layer4.1.conv2.weight"])
    # It trained on 64-pixel crops, and runs on them afterwards: evaluation repeats the last epoch's top-1.
    assert (tuned.preprocessing.input_size, tuned.preprocessing.resize_size) == (64, 73)
    evaluated, _ = evaluate_model(load_deployed(result.run_dir / "last.safetensors"), str(hymenoptera_root))
    assert evaluated.top1 == pytest.approx(result.final_top1)
