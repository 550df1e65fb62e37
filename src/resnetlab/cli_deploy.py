"""``resnetlab export``, ``quantize`` and ``prune``: a trained model made deployable, with before/after figures."""
from __future__ import annotations

import argparse
import tempfile
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

    prune = commands.add_parser(
        "prune", help="structured channel pruning to a MAC budget, then fine-tuning",
        description="Remove each block's weakest inner channels until the network has --target-macs of its "
                    "MACs, fine-tune it on --data, and save a smaller dense model (plain config + weights).")
    prune.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training")
    prune.add_argument("--data", required=True, help="image folder to fine-tune on and evaluate with, or cifar10")
    prune.add_argument("--target-macs", type=float, default=0.5, help="fraction of the MACs to keep (default 0.5)")
    prune.add_argument("--criterion", default="l1", choices=["l1", "bn-gamma"],
                       help="how a channel is ranked: its filter's L1 norm, or its BN scale (default l1)")
    prune.add_argument("--finetune-epochs", type=int, default=5, help="0 skips fine-tuning (default 5)")
    prune.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak lr (default 0.01)")
    prune.add_argument("--batch-size", type=int, default=128)
    prune.add_argument("--out", type=Path, help="run directory (default: beside the checkpoint, pruned-<target>)")
    prune.set_defaults(run=cmd_prune)
    add_compress_parser(commands)


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
    from .compress.chain import measure_file
    from .compress.quantize import calibration_batches, quantize_model
    from .complexity import count_macs
    from .errors import ConfigError
    from .export import export_model
    from .models import load_model

    if args.calib_images < 1:
        raise ConfigError(f"--calib-images must be at least 1, not {args.calib_images}")
    model = load_model(args.checkpoint).eval()
    calibration = calibration_batches(model, args.calib, args.calib_images)
    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}.int8.onnx")
    quantize_model(model, calibration, out, args.calibration)

    macs = count_macs(model)  # INT8 changes the arithmetic's precision, not its amount
    with tempfile.TemporaryDirectory() as work:
        fp32_onnx = export_model(model, Path(work) / "fp32.onnx").path  # the same runtime, without INT8
        records = [measure_file(label, path, args.data, macs)
                   for label, path in (("fp32 (PyTorch)", args.checkpoint), ("fp32 (ONNX Runtime)", fp32_onnx),
                                       ("INT8 (ONNX Runtime)", out))]
    print_records(records, f"{model.arch}: fp32 -> INT8 ({sum(len(b) for b in calibration)} calibration images, "
                           f"{args.calibration})", console)


def cmd_prune(args: argparse.Namespace, console) -> None:
    from .compress.chain import ChainSettings, compress

    settings = ChainSettings(target_macs=args.target_macs, criterion=args.criterion, epochs=args.finetune_epochs,
                             lr=args.lr, batch_size=args.batch_size)
    out = args.out or args.checkpoint.parent / f"pruned-{args.target_macs:g}"
    records = compress(args.checkpoint, args.data, ["prune"], out, settings)
    print_records(records, f"pruned to {args.target_macs:g} of its MACs", console)


def add_compress_parser(commands) -> None:
    chain = commands.add_parser(
        "compress", help="prune, distill, quantize and export in one go, measured after every step",
        description="Run the compression steps in order (prune -> distill -> quantize -> export); after each, "
                    "record parameters, MACs, file size, batch-1 latency and top-1 in one report. With prune "
                    "and distill, the pruned network is trained with the original as its teacher.")
    chain.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training")
    chain.add_argument("--data", required=True, help="image folder with train/ and val/ or test/ splits")
    chain.add_argument("--steps", default="prune,distill,quantize,export",
                       help="comma-separated, from prune, distill, quantize, export (default: all four)")
    chain.add_argument("--out", required=True, type=Path, help="folder for each step's file and report.json")
    chain.add_argument("--target-macs", type=float, default=0.5, help="prune: fraction of the MACs to keep")
    chain.add_argument("--criterion", default="l1", choices=["l1", "bn-gamma"], help="prune: channel ranking")
    chain.add_argument("--student", help="distill without prune: the architecture to train")
    chain.add_argument("--epochs", type=int, default=5, help="training after pruning / of the student (default 5)")
    chain.add_argument("--lr", type=float, default=0.01)
    chain.add_argument("--batch-size", type=int, default=128)
    chain.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the soft targets")
    chain.add_argument("--temperature", type=float, default=4.0, help="distill: softening temperature")
    chain.add_argument("--calib-images", type=int, default=256, help="quantize: calibration images")
    chain.set_defaults(run=cmd_compress)


def cmd_compress(args: argparse.Namespace, console) -> None:
    from .compress.chain import ChainSettings, compress

    settings = ChainSettings(target_macs=args.target_macs, criterion=args.criterion, student=args.student,
                             epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, alpha=args.alpha,
                             temperature=args.temperature, calib_images=args.calib_images)
    steps = [step.strip() for step in args.steps.split(",") if step.strip()]
    records = compress(args.checkpoint, args.data, steps, args.out, settings)
    print_records(records, " -> ".join(["original", *steps]), console)
    print(f"wrote {args.out / 'report.json'}")


def print_records(records, title: str, console) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("model", "params", "GMACs", "MB", "ms (batch 1)", "top-1"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for record in records:
        table.add_row(record.step, f"{record.params:,}" if record.params is not None else "-",
                      f"{record.macs / 1e9:.3f}", f"{record.megabytes:.2f}", f"{record.latency_ms:.2f}",
                      f"{100 * record.top1:.2f}%" if record.top1 is not None else "-")
    console.print(table)
    print(f"wrote {records[-1].path}")
