"""``resnetlab explain``: the Grad-CAM heatmap of a prediction, over the image."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console

from ..atomic import atomic_path
from ..errors import ConfigError
from ..explain import ExplainSettings, grad_cam, overlay_heatmap
from ..image_input import check_reads_image_files, normalize, read_crop
from ..models import load_model


def add_parsers(commands) -> None:
    explain_parser = commands.add_parser("explain", help="Grad-CAM heatmap of a prediction, over the image")
    explain_parser.add_argument("--checkpoint", required=True, help="a .safetensors classifier from save_weights, or a pretrained tag")
    explain_parser.add_argument("image", type=Path, help="the image to explain")
    explain_parser.add_argument("--out", required=True, type=Path, help="the PNG to write, e.g. cam.png")
    explain_parser.add_argument("--class", dest="class_name",
                         help="class whose evidence to show (default: the predicted one)")
    explain_parser.set_defaults(run=cmd_explain)


def cmd_explain(args: argparse.Namespace, console: Console) -> None:
    settings = ExplainSettings(checkpoint=args.checkpoint, image=args.image, out=args.out, class_name=args.class_name)
    model = load_model(settings.checkpoint)
    check_reads_image_files(model.config.in_chans)
    if model.config.num_classes == 0:
        raise ConfigError(f"{settings.checkpoint} has no classifier (num_classes=0); explain needs one")
    names = model.class_names or [str(i) for i in range(model.config.num_classes)]
    if settings.class_name is not None and settings.class_name not in names:
        raise ConfigError(f"unknown class {settings.class_name!r}; the model knows {', '.join(names)}")
    crop = read_crop(settings.image, model.preprocessing)
    image = normalize(crop, model.preprocessing)
    with torch.no_grad():
        probabilities = model.eval()(image.unsqueeze(0)).softmax(dim=1)[0]
    predicted = int(probabilities.argmax())
    target = predicted if settings.class_name is None else names.index(settings.class_name)
    heatmap = grad_cam(model, image, target)
    with atomic_path(settings.out) as tmp:
        overlay_heatmap(crop, heatmap).save(tmp, format="PNG")
    print(f"predicted {names[predicted]} ({probabilities[predicted]:.1%}); "
          f"wrote the Grad-CAM of {names[target]} over the image to {settings.out}")
