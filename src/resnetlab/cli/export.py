"""``resnetlab export``: a trained model as ONNX, an AOTInductor package or safetensors, checked against eager."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..deploy.export import DEFAULT_OPSET, EXPORT_FORMATS, MAX_OPSET, MIN_OPSET, ExportSettings
from ..deploy.files import FORMAT_SUFFIXES
from ..pretrained.catalog import is_pretrained_tag


def add_parsers(commands) -> None:
    export = commands.add_parser("export", help="ONNX, an AOTInductor package (.pt2) or safetensors, checked "
                                                "against eager at once")
    export.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training, or a pretrained tag")
    export.add_argument("--format", default="onnx", choices=EXPORT_FORMATS,
                        help="onnx (torch.export-based exporter), pt2 (compiled ahead of time for this CPU by "
                             "AOTInductor; runs with torch alone; replaces TorchScript), or safetensors (default onnx)")
    export.add_argument("--out", type=Path, help="the file to write (default: beside the checkpoint, new suffix)")
    export.add_argument("--static-batch", action="store_true",
                        help="ONNX: fix the batch at 1 (default: a dynamic batch dimension)")
    export.add_argument("--opset", type=int, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    export.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace, console) -> None:
    from ..deploy.export import export_model
    from ..models import load_model

    settings = ExportSettings(format=args.format, opset=args.opset, static_batch=args.static_batch)
    out = args.out or named_after(args.checkpoint, FORMAT_SUFFIXES[settings.format])
    if out.resolve() == args.checkpoint.resolve():
        out = out.with_name(f"{out.stem}.exported{out.suffix}")
    model = load_model(args.checkpoint)
    if settings.format == "pt2":
        print("compiling with AOTInductor for this CPU: a minute or so for a ResNet-50 on two cores")
    report = export_model(model, out, settings)
    batches = " and ".join(map(str, report.checked_batches))
    print(f"wrote {report.path} ({report.bytes / 1e6:.1f} MB, {report.format}); max |logit difference| from "
          f"eager {report.max_abs_difference:.2g} on batches of {batches}")


def named_after(checkpoint: Path, suffix: str) -> Path:
    """An output's default path: the checkpoint's own with ``suffix`` in place of its last one, or, for a
    pretrained tag, the whole tag and ``suffix`` in the working folder (resnet50.a1_in1k.onnx)."""
    if is_pretrained_tag(checkpoint):
        return Path(f"{checkpoint}{suffix}")
    return checkpoint.with_name(checkpoint.stem + suffix)
