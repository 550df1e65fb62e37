"""``resnetlab export``: a trained model as ONNX, TorchScript or safetensors, checked against eager."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="ONNX, TorchScript or safetensors, checked against eager at once")
    export.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training")
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "safetensors"])
    export.add_argument("--out", type=Path, help="the file to write (default: beside the checkpoint, new suffix)")
    export.add_argument("--static-batch", action="store_true",
                        help="ONNX: fix the batch at 1 (default: a dynamic batch dimension)")
    export.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    export.set_defaults(run=cmd_export)


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
