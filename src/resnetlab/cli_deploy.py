"""``resnetlab export``, ``quantize`` and ``prune``: a trained model made deployable, with before/after figures."""
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


def cmd_prune(args: argparse.Namespace, console) -> None:
    from rich.table import Table

    from .bench.measure import measure
    from .compress.prune import prune_model
    from .complexity import count_macs, count_parameters
    from .config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
    from .deployed import load_deployed
    from .engine.evaluation import evaluate_model
    from .engine.trainer import BEST_WEIGHTS, train
    from .errors import ConfigError
    from .models import load_model, save_weights

    if args.finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be 0 or more, not {args.finetune_epochs}")
    original = load_model(args.checkpoint).eval()
    pruned = prune_model(original, args.target_macs, args.criterion)
    out = args.out or args.checkpoint.parent / f"pruned-{args.target_macs:g}"
    if (out / "pruned.safetensors").exists():
        raise ConfigError(f"{out} already holds a pruned model; choose another --out")
    pruned_path = save_weights(pruned, out / "pruned.safetensors")
    stages = [("original", args.checkpoint), (f"pruned ({args.criterion})", pruned_path)]
    if args.finetune_epochs:
        config = TrainConfig(
            model=ModelConfig(name=pruned.arch, options={"mid_channels": [list(w) for w in pruned.config.mid_channels]},
                              weights=str(pruned_path)),
            data=DataConfig(data=args.data, batch_size=args.batch_size),
            optim=OptimConfig(lr=args.lr),
            schedule=ScheduleConfig(name="cosine"), epochs=args.finetune_epochs, out=str(out / "finetune"))
        train(config)
        stages.append((f"pruned + {args.finetune_epochs} epochs", out / "finetune" / BEST_WEIGHTS))

    side = original.preprocessing.input_size
    example = torch.randn(1, original.config.in_chans, side, side)
    table = Table(title=f"{original.arch}: pruned to {args.target_macs:g} of its MACs")
    for column in ("model", "params", "GMACs", "ms (batch 1)", "top-1"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, path in stages:
        model = load_model(path).eval()
        deployed = load_deployed(path)
        latency = measure(deployed, example, warmup=3, repeats=20).latency_ms_median
        top1 = evaluate_model(deployed, args.data)[0].top1
        table.add_row(label, f"{count_parameters(model):,}", f"{count_macs(model) / 1e9:.3f}", f"{latency:.2f}",
                      f"{100 * top1:.2f}%")
    console.print(table)
    print(f"wrote {stages[-1][1]}")

