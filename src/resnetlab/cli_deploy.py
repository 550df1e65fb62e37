"""``resnetlab export`` and ``quantize``: a trained model as a deployable file, with before/after figures."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="ONNX, TorchScript or safetensors, checked against eager at once")
    export.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training")
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "safetensors"])
    export.add_argument("--out", type=Path, help="the file to write (default: beside the checkpoint, new suffix)")
    export.add_argument("--static-batch", action="store_true",
                        help="ONNX: fix the batch at 1 (default: a dynamic batch dimension)")
    export.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    export.set_defaults(run=cmd_export)

    quantize = commands.add_parser(
        "quantize", help="INT8 post-training static quantization (ONNX Runtime), calibrated on real images",
        description="Quantize a trained model to INT8: per-channel weights, BN folded, Conv+ReLU fused, "
                    "activation ranges from --calib images. Prints size, latency and (with --data) top-1, "
                    "before and after.")
    quantize.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training")
    quantize.add_argument("--calib", required=True, type=Path,
                          help="a folder of real images like those the model will see (any layout)")
    quantize.add_argument("--calib-images", type=int, default=256, help="how many to use (default 256)")
    quantize.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "entropy"],
                          help="how activation ranges are set from them (default minmax)")
    quantize.add_argument("--data", help="also measure top-1 before and after on this folder's val/test split")
    quantize.add_argument("--out", type=Path, help="the .onnx to write (default: CHECKPOINT.int8.onnx)")
    quantize.set_defaults(run=cmd_quantize)


def cmd_export(args: argparse.Namespace, console) -> None:
    from .errors import ConfigError
    from .export import FORMATS, export_model
    from .models import load_model

    if args.format != "onnx" and (args.opset is not None or args.static_batch):
        raise ConfigError("--opset applies to ONNX exports only" if args.opset is not None
                          else "--static-batch applies to ONNX exports only")
    out = args.out or args.checkpoint.with_suffix(FORMATS[args.format])
    if out.resolve() == args.checkpoint.resolve():
        out = out.with_name(f"{out.stem}.exported{out.suffix}")
    report = export_model(load_model(args.checkpoint), out, args.format, dynamic_batch=not args.static_batch,
                          opset=args.opset or 17)
    batches = " and ".join(map(str, report.checked_batches))
    print(f"wrote {report.path} ({report.bytes / 1e6:.1f} MB, {report.format}); max |logit difference| from "
          f"eager {report.max_abs_difference:.2g} on batches of {batches}")


def cmd_quantize(args: argparse.Namespace, console) -> None:
    from rich.table import Table

    from .bench.measure import measure
    from .compress.quantize import calibration_batches, quantize_model
    from .deployed import load_deployed
    from .engine.evaluation import evaluate_model
    from .errors import ConfigError
    from .export import export_model
    from .models import load_model

    if args.calib_images < 1:
        raise ConfigError(f"--calib-images must be at least 1, not {args.calib_images}")
    model = load_model(args.checkpoint).eval()
    calibration = calibration_batches(model, args.calib, args.calib_images)
    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}.int8.onnx")
    quantize_model(model, calibration, out, args.calibration)

    side = model.preprocessing.input_size
    example = torch.randn(1, model.config.in_chans, side, side)
    table = Table(title=f"{model.arch}: fp32 -> INT8 ({sum(len(b) for b in calibration)} calibration images, "
                        f"{args.calibration})")
    for column in ("model", "file MB", "ms (batch 1)", "top-1"):
        table.add_column(column, justify="left" if column == "model" else "right")
    with tempfile.TemporaryDirectory() as work:
        fp32_onnx = export_model(model, Path(work) / "fp32.onnx").path  # the same runtime, without INT8
        for label, path in (("fp32 (PyTorch)", args.checkpoint), ("fp32 (ONNX Runtime)", fp32_onnx),
                            ("INT8 (ONNX Runtime)", out)):
            deployed = load_deployed(path)
            latency = measure(deployed, example, warmup=3, repeats=20).latency_ms_median
            top1 = f"{100 * evaluate_model(deployed, args.data)[0].top1:.2f}%" if args.data else "-"
            table.add_row(label, f"{path.stat().st_size / 1e6:.2f}", f"{latency:.2f}", top1)
    console.print(table)
    print(f"wrote {out}")
