"""``resnetlab eval`` and ``predict``: a model file's accuracy on a labelled folder, and its labels for image files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from ..errors import DataError


def add_parsers(commands) -> None:
    evaluate = commands.add_parser("eval", help="top-1, top-5, per-class accuracy and confusion matrix")
    evaluate.add_argument("--checkpoint", required=True, type=Path,
                          help="a .safetensors written by training, an .onnx, .pt2 or .pt from export or quantize, or a pretrained tag")
    evaluate.add_argument("--data", required=True,
                          help="image folder (its val/ or test/ split, or class folders directly), or cifar10")
    evaluate.add_argument("--split", help="the folder to evaluate on (default: val, else test)")
    evaluate.add_argument("--batch-size", type=int, default=128)
    evaluate.add_argument("--max-per-class", type=int, help="evaluate the first N images of each class")
    evaluate.add_argument("--out", type=Path, help="where confusion.csv/png go (default: beside the checkpoint)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(run=cmd_eval)

    predict = commands.add_parser("predict", help="top-k labels of image files")
    predict.add_argument("--checkpoint", required=True, type=Path,
                         help="a .safetensors written by training, an .onnx, .pt2 or .pt from export or quantize, or a pretrained tag")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument("-k", "--top-k", type=int, default=5)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--json", action="store_true", help="print JSON instead of lines")
    predict.set_defaults(run=cmd_predict)


def cmd_eval(args: argparse.Namespace, console) -> None:
    from ..engine.evaluation import EvalSettings, evaluate_checkpoint

    report = evaluate_checkpoint(EvalSettings(checkpoint=args.checkpoint, data=args.data, split=args.split,
                                              batch_size=args.batch_size, max_per_class=args.max_per_class,
                                              out=args.out, device=args.device))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_evaluation(report, console)


def print_evaluation(report, console) -> None:
    result = report.result
    top5 = f", top-5 {100 * result.top5:.2f}%" if result.top5 is not None else ""
    console.print(f"{report.checkpoint} on {report.source} ({result.count:,} images): "
                  f"top-1 {100 * result.top1:.2f}%{top5}, loss {result.loss:.4f}")
    table = Table(title="per-class accuracy")
    for column in ("class", "images", "top-1"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, accuracy, count in zip(report.class_names, result.per_class, result.confusion.sum(dim=1).tolist()):
        table.add_row(name, f"{count:,}", f"{100 * accuracy:.1f}%")
    console.print(table)
    console.print(f"confusion matrix: {report.confusion_csv} and {report.confusion_png}")


def cmd_predict(args: argparse.Namespace, console) -> None:
    from ..deploy.files import load_deployed
    from ..data.folders import image_paths
    from ..predict import PredictSettings, predict_files

    settings = PredictSettings(checkpoint=args.checkpoint, inputs=args.inputs, top_k=args.top_k, device=args.device)
    paths = image_paths(settings.inputs)  # before the model loads: a wrong path fails at once
    model = load_deployed(settings.checkpoint, settings.device)
    predictions, bad = predict_files(model, paths, settings.top_k)
    for skipped in bad:
        print(f"skipped {skipped.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps([p.as_dict() for p in predictions], indent=2))
    else:
        print_predictions(predictions)
    if not predictions:
        raise DataError(f"none of the {len(paths)} files could be read as images")


def print_predictions(predictions) -> None:
    for prediction in predictions:
        ranked = ", ".join(f"{label} {100 * p:.1f}%" for label, p in zip(prediction.labels, prediction.probabilities))
        print(f"{prediction.path}: {ranked}")
