"""Grad-CAM on a CIFAR-10-trained ResNet: size, range, class dependence, localisation, CLI."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from resnetlab import ConfigError, create_model, load_model
from resnetlab.cli import main
from resnetlab.explain import MIN_DISPLAY_SIDE, grad_cam
from resnetlab.image_input import normalize, read_crop

# Measured: 0.56 of the heatmap lies on the quarter of the canvas holding the image (chance 0.25).
MIN_MASS_ON_OBJECT = 0.40


@pytest.fixture(scope="module")
def model(cifar_classifier):
    return load_model(cifar_classifier).eval()


@pytest.fixture(scope="module")
def examples(cifar10_root, model):
    """Three real test images of each class, as normalised inputs, with their labels."""
    inputs, labels = [], []
    for label, name in enumerate(model.class_names):
        for path in sorted((cifar10_root / "test" / name).glob("*.jpg"))[:3]:
            inputs.append(normalize(read_crop(path, model.preprocessing), model.preprocessing))
            labels.append(label)
    return inputs, labels


def test_heatmap_has_the_image_size_and_spans_zero_to_one(model, examples):
    image = examples[0][0]
    heatmap = grad_cam(model, image)
    assert heatmap.shape == (32, 32)
    assert heatmap.min() == 0 and heatmap.max() == pytest.approx(1.0)
    wide = torch.nn.functional.interpolate(image[None], size=(40, 56), mode="bilinear")[0]
    assert grad_cam(model, wide).shape == (40, 56)  # any input size, non-square included


def test_heatmap_depends_on_the_target_class_and_defaults_to_the_prediction(model, examples):
    image = examples[0][12]
    with torch.no_grad():
        ranking = model(image[None])[0].argsort(descending=True).tolist()
    best, worst = ranking[0], ranking[-1]
    assert torch.equal(grad_cam(model, image), grad_cam(model, image, best))
    assert (grad_cam(model, image, best) - grad_cam(model, image, worst)).abs().mean() > 0.05


def test_heatmap_lies_on_the_object(model, examples):
    # Each image in one quarter of a blank canvas (zeros: the mean colour after normalisation).
    fractions = []
    for image, label in zip(*examples):
        canvas = torch.zeros(3, 64, 64)
        canvas[:, 32:, :32] = image
        heatmap = grad_cam(model, canvas, label)
        fractions.append(heatmap[32:, :32].sum() / heatmap.sum())
    assert torch.stack(fractions).mean() > MIN_MASS_ON_OBJECT


def test_grad_cam_leaves_the_model_as_it_found_it(model, examples):
    model.train()
    try:
        grad_cam(model, examples[0][0])
        assert model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_grad_cam_needs_a_classifier_and_a_valid_class():
    headless = create_model("cifar_resnet20", num_classes=0)
    with pytest.raises(ConfigError, match="Grad-CAM needs a classifier"):
        grad_cam(headless, torch.zeros(3, 32, 32))
    with pytest.raises(ConfigError, match="target_class must be 0 to 9"):
        grad_cam(create_model("cifar_resnet20"), torch.zeros(3, 32, 32), target_class=10)


def test_cli_explain_writes_the_overlay_and_prints_the_prediction(capsys, cifar_classifier, cifar10_root,
                                                                  tmp_path):
    image = sorted((cifar10_root / "test" / "ship").glob("*.jpg"))[0]
    out = tmp_path / "cam.png"
    assert main(["explain", "--checkpoint", str(cifar_classifier), str(image), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("predicted ") and str(out) in printed
    assert out.stat().st_size > 0
    with Image.open(out) as written:
        assert written.format == "PNG" and written.mode == "RGB"
        assert written.size == (MIN_DISPLAY_SIDE, MIN_DISPLAY_SIDE)  # 32x32 enlarged 8x for viewing

    assert main(["explain", "--checkpoint", str(cifar_classifier), str(image), "--out", str(out),
                 "--class", "frog"]) == 0
    assert "Grad-CAM of frog" in capsys.readouterr().out


def test_cli_explain_rejects_an_unknown_class_in_one_line(capsys, cifar_classifier, cifar10_root, tmp_path):
    image = sorted((cifar10_root / "test" / "ship").glob("*.jpg"))[0]
    code = main(["explain", "--checkpoint", str(cifar_classifier), str(image), "--out",
                 str(tmp_path / "cam.png"), "--class", "unicorn"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "unknown class 'unicorn'; the model knows airplane, automobile" in err
    assert not (tmp_path / "cam.png").exists()
