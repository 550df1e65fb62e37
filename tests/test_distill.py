"""Knowledge distillation: the loss, the command, and a student that learns more with its teacher."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from resnetlab import create_model, load_model, save_weights
from resnetlab.cli import main
from resnetlab.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from resnetlab.engine.distill import distillation_loss
from resnetlab.engine.trainer import train
from subsets import cifar_subset


def test_the_loss_is_cross_entropy_at_alpha_0_and_zero_against_itself_at_alpha_1():
    torch.manual_seed(0)
    student = create_model("cifar_resnet20", num_classes=10).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    hard_only, logits = distillation_loss(copy.deepcopy(student), alpha=0.0, temperature=4.0)(student, images, labels)
    assert hard_only.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    soft_only, _ = distillation_loss(copy.deepcopy(student), alpha=1.0, temperature=4.0)(student, images, labels)
    assert abs(soft_only.item()) < 1e-6  # a teacher identical to the student teaches nothing


def test_the_soft_loss_pulls_the_student_towards_the_teacher():
    torch.manual_seed(0)
    student, teacher = create_model("cifar_resnet20", num_classes=10), create_model("cifar_resnet20", num_classes=10)
    student.train(), teacher.eval()
    images = torch.randn(8, 3, 32, 32)
    loss_fn = distillation_loss(teacher, alpha=1.0, temperature=2.0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    losses = []
    for _ in range(8):
        loss, _ = loss_fn(student, images, torch.zeros(8, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]  # measured: 4.17 -> 0.47 in 8 steps


@pytest.fixture(scope="module")
def cifar_500(cifar10_root, tmp_path_factory):
    """500 real training images (50 a class) and 1,000 test images."""
    return cifar_subset(cifar10_root, tmp_path_factory.mktemp("cifar500"), train_per_class=50, test_per_class=100)


STUDENT_EPOCHS = 4


def student_run(data, out, teacher=None, seed=0) -> float:
    config = TrainConfig(
        model=ModelConfig(name="cifar_resnet20"), data=DataConfig(data=str(data), batch_size=32),
        optim=OptimConfig(lr=0.05, weight_decay=5e-4), schedule=ScheduleConfig(name="cosine", warmup=0.5),
        distill=DistillConfig(teacher=str(teacher) if teacher else None, alpha=0.7, temperature=4.0),
        epochs=STUDENT_EPOCHS, seed=seed, out=str(out))
    return train(config).final_top1


def test_a_student_with_a_teacher_beats_the_same_student_alone(cifar_classifier, cifar_500, tmp_path):
    # The teacher (the conftest classifier) learnt from 4,000 images; the students see 500.
    # A student alone after 4 epochs on 500 images swings by seed (0.227-0.263 over four seeds on
    # the Zen 3 host): KD must win on each seed, and by 3 points on average over the two.
    leads = []
    for seed in (0, 1):
        with_teacher = student_run(cifar_500, tmp_path / f"kd{seed}", cifar_classifier, seed)
        alone = student_run(cifar_500, tmp_path / f"alone{seed}", None, seed)
        leads.append(with_teacher - alone)
    # Measured: 0.336 vs 0.237 (seed 0), 0.315 vs 0.245 (seed 1) on the 1,000 test images; seeds 2
    # and 3 led by 0.081 and 0.038.
    assert min(leads) > 0 and sum(leads) / len(leads) >= 0.03, leads


def test_distill_command_records_the_teacher_and_refuses_a_mismatched_one(cifar_classifier, cifar_500, tmp_path,
                                                                          capsys):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(cifar_classifier), "--student", "cifar_resnet20", "--data",
                 str(cifar_500), "--epochs", "1", "--max-per-class", "10", "--batch-size", "20",
                 "--alpha", "0.9", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["distill"] == {"teacher": str(cifar_classifier), "alpha": 0.9, "temperature": 4.0}
    assert load_model(out / "last.safetensors").arch == "cifar_resnet20"

    five_classes = create_model("cifar_resnet20", num_classes=5)
    other = save_weights(five_classes, tmp_path / "five.safetensors", class_names=list("abcde"))
    assert main(["distill", "--teacher", str(other), "--data", str(cifar_500), "--out", str(tmp_path / "x")]) == 2
    assert "distillation needs the same classes in the same order" in capsys.readouterr().err
    assert main(["distill", "--data", str(cifar_500), "--out", str(tmp_path / "y")]) == 2
    assert "resnetlab distill needs a teacher" in capsys.readouterr().err
