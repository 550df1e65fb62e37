"""``resnetlab quantize``, ``prune`` and ``compress``: a trained model made smaller and faster, with before/after figures."""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import fields
from pathlib import Path

from ..compress.chain import PRUNE_IMAGES, ChainSettings
from ..compress.int8_target import INT8_TARGETS
from ..compress.prune import CRITERIA
from ..compress.quantize import (CALIB_IMAGES, CALIBRATION_METHODS, INT8_BACKENDS, METHODS, QAT_BATCH, QAT_EPOCHS,
                                 QAT_LR, QuantizeSettings)
from ..pretrained.catalog import is_pretrained_tag
from .export import named_after


def add_parsers(commands) -> None:
    quantize = commands.add_parser(
        "quantize", help="INT8 quantization: post-training (calibrated on real images) or quantization-aware training",
        description="Quantize a trained model to INT8: per-channel weights, BN folded, Conv+ReLU fused. --method ptq "
                    "sets activation ranges from --calib images; --method qat fine-tunes with INT8 simulated on "
                    "--data's train split. --backend picks the runtime: onnxruntime or openvino (.onnx) or "
                    "PyTorch's x86 kernels through AOTInductor (.pt2). Prints size, latency and (with --data) top-1, "
                    "before and after.")
    quantize.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training, or a pretrained tag")
    quantize.add_argument("--method", default="ptq", choices=METHODS,
                          help="post-training quantization, or quantization-aware training (default ptq)")
    quantize.add_argument("--backend", default="auto", choices=["auto", *INT8_BACKENDS],
                          help="the runtime the INT8 model is made for (default auto: OpenVINO on CPUs without "
                               "VNNI if installed, where it measured fastest; ONNX Runtime elsewhere)")
    quantize.add_argument("--calib", type=Path,
                          help="ptq: a folder of real images like those the model will see (any layout)")
    quantize.add_argument("--calib-images", type=int,
                          help=f"ptq: how many to use (default {CALIB_IMAGES})")
    quantize.add_argument("--calibration", choices=CALIBRATION_METHODS,
                          help="ptq with onnxruntime: how activation ranges are set from them (default minmax)")
    quantize.add_argument("--data", help="qat: the image folder whose train/ split it fine-tunes on; with either "
                                         "method, top-1 before and after is measured on its val/ or test/ split")
    quantize.add_argument("--epochs", type=int, help=f"qat: epochs of fine-tuning (default {QAT_EPOCHS})")
    quantize.add_argument("--lr", type=float, help=f"qat: peak learning rate, cosine-decayed (default {QAT_LR:g})")
    quantize.add_argument("--batch-size", type=int, help=f"qat: images per step (default {QAT_BATCH})")
    add_int8_target_argument(quantize)
    quantize.add_argument("--out", type=Path,
                          help="the file to write: .onnx, or .pt2 for x86 (default: CHECKPOINT.int8.onnx or .pt2)")
    quantize.set_defaults(run=cmd_quantize)

    prune = commands.add_parser(
        "prune", help="structured channel pruning to a MAC budget, then fine-tuning",
        description="Remove the weakest channels inside each block (with --prune-stream, of the residual "
                    "stream too: the channels a shortcut ties together go together) until the network has "
                    f"--target-macs of its MACs; re-estimate its BN statistics on {PRUNE_IMAGES} training images, "
                    "fine-tune it on --data, and save a smaller dense model (plain config + weights).")
    prune.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training, or a pretrained tag")
    prune.add_argument("--data", required=True, help="image folder to fine-tune on and evaluate with, or cifar10")
    prune.add_argument("--target-macs", type=float,
                       help=f"fraction of the MACs to keep (default {ChainSettings.target_macs:g})")
    prune.add_argument("--criterion", choices=CRITERIA,
                       help="how a channel is ranked: its filters' L1 norm, its BN scales, or the loss change "
                            f"its removal causes on {PRUNE_IMAGES} training images, to first order "
                            f"(default {ChainSettings.criterion})")
    prune.add_argument("--prune-stream", dest="keep_stream", action="store_false", default=None,
                       help="prune the residual stream's channels too, not only each block's inner ones")
    add_round_to_argument(prune)
    prune.add_argument("--finetune-epochs", dest="epochs", type=int, metavar="N",
                       help=f"0 skips fine-tuning (default {ChainSettings.epochs})")
    prune.add_argument("--lr", type=float, help=f"fine-tuning peak lr (default {ChainSettings.lr:g})")
    prune.add_argument("--batch-size", type=int, help=f"default {ChainSettings.batch_size}")
    add_precision_argument(prune)
    prune.add_argument("--out", type=Path, help="run directory (default: beside the checkpoint, pruned-<target>)")
    prune.set_defaults(run=cmd_prune)
    add_compress_parser(commands)


def add_round_to_argument(parser) -> None:
    parser.add_argument("--round-to", dest="channel_multiple", type=int, metavar="N",
                        help="prune: make every pruned width a multiple of N channels, which keeps CPU vector "
                             "registers full: 8 for AVX2, 16 for AVX-512 "
                             f"(default {ChainSettings.channel_multiple}; 1: exact widths)")


def add_precision_argument(parser) -> None:
    from ..config import TRAINING_PRECISIONS

    parser.add_argument("--precision", choices=TRAINING_PRECISIONS,
                        help="of the training, as in train: bf16 is about twice as fast as fp32 on CPUs with "
                             "native bf16 (default auto: bf16 on GPUs that have it, fp32 on CPUs)")


def add_int8_target_argument(parser, prefix: str = "") -> None:
    parser.add_argument("--int8-target", choices=INT8_TARGETS,
                        help=f"{prefix}the CPUs the INT8 file is for: vnni (8-bit weights; CPUs with AVX-512 VNNI, "
                             "AVX-VNNI or AMX), no-vnni (7-bit weights, which CPUs without VNNI need; correct on "
                             "every CPU), auto: this CPU's kind (default auto)")


def quantize_settings(args: argparse.Namespace) -> QuantizeSettings:
    return QuantizeSettings(**{field.name: getattr(args, field.name) for field in fields(QuantizeSettings)})


def cmd_quantize(args: argparse.Namespace, console) -> None:
    from ..compress.chain import measure_file, time_records
    from ..compress.int8_target import int8_layout, speed_note
    from ..compress.quantize import RUNTIME_NAMES, check_backend, write_fp32_reference
    from ..complexity import count_macs
    from ..models import load_model, save_weights

    settings = quantize_settings(args)
    backend = settings.resolved_backend
    out = args.out or named_after(args.checkpoint, f".int8{INT8_BACKENDS[backend]}")
    check_backend(backend, out)
    target = settings.int8_target or "auto"
    layout = int8_layout(backend, target)
    model = load_model(args.checkpoint).eval()
    if settings.method == "ptq":
        from ..compress.quantize import calibration_batches, quantize_model

        calibration = calibration_batches(model, settings.calib, settings.calib_images or CALIB_IMAGES)
        quantize_model(model, calibration, out, settings.calibration, backend, target)
        how = f"{sum(len(b) for b in calibration)} calibration images"
    else:
        from ..compress.qat import quantization_aware_training

        epochs = QAT_EPOCHS if settings.epochs is None else settings.epochs
        quantization_aware_training(model, settings.data, out, backend, epochs,
                                    QAT_LR if settings.lr is None else settings.lr,
                                    QAT_BATCH if settings.batch_size is None else settings.batch_size, target)
        how = f"quantization-aware training, {epochs} epoch(s)"

    macs = count_macs(model)  # INT8 changes the arithmetic's precision, not its amount
    runtime = RUNTIME_NAMES[backend]
    with tempfile.TemporaryDirectory() as work:
        fp32 = write_fp32_reference(model, backend, Path(work))  # the same runtime, without INT8
        # A pretrained tag is measured as the file training would have written.
        source = save_weights(model, Path(work) / "pretrained.safetensors") \
            if is_pretrained_tag(args.checkpoint) else args.checkpoint
        records = [measure_file(label, path, settings.data, macs)
                   for label, path in (("fp32 (PyTorch)", source), (f"fp32 ({runtime})", fp32),
                                       (f"INT8 ({runtime})", out))]
        time_records(records)
    print(f"INT8 {layout.summary}")
    print_records(records, f"{model.arch}: fp32 -> INT8 ({how})", console)
    note = speed_note(records[2].latency_ms, records[1].latency_ms, records[2].megabytes, records[1].megabytes,
                      runtime)
    if note:
        print(note)


def cmd_prune(args: argparse.Namespace, console) -> None:
    from ..compress.chain import compress

    settings, given = chain_settings(args)
    out = args.out or args.checkpoint.parent / f"pruned-{settings.target_macs:g}"
    records = compress(args.checkpoint, args.data, ["prune"], out, settings, given)
    print_records(records, f"pruned to {settings.target_macs:g} of its MACs", console)


def chain_settings(args: argparse.Namespace) -> tuple[ChainSettings, set[str]]:
    """The settings the command was given, the defaults for the rest, and which were given: a flag for
    a step that does not run is an error even when its value is the default."""
    given = {field.name: getattr(args, field.name) for field in fields(ChainSettings)
             if getattr(args, field.name, None) is not None}
    return ChainSettings(**given), set(given)


def add_compress_parser(commands) -> None:
    chain = commands.add_parser(
        "compress", help="prune, distill, quantize and export in one go, measured after every step",
        description="Run the compression steps in order (prune -> distill -> quantize -> export); after each, "
                    "record parameters, MACs, file size, batch-1 latency and top-1 in one report. With prune "
                    "and distill, the pruned network is trained with the original as its teacher.")
    chain.add_argument("--checkpoint", required=True, type=Path, help="a .safetensors written by training, or a pretrained tag")
    chain.add_argument("--data", required=True, help="image folder with train/ and val/ or test/ splits")
    chain.add_argument("--steps", default="prune,distill,quantize,export",
                       help="comma-separated, from prune, distill, quantize, export (default: all four)")
    chain.add_argument("--out", required=True, type=Path, help="folder for each step's file and report.json")
    chain.add_argument("--target-macs", type=float,
                       help=f"prune: fraction of the MACs to keep (default {ChainSettings.target_macs:g})")
    chain.add_argument("--criterion", choices=CRITERIA,
                       help=f"prune: channel ranking (default {ChainSettings.criterion})")
    chain.add_argument("--prune-stream", dest="keep_stream", action="store_false", default=None,
                       help="prune: the residual stream's channels too, not only the inner ones")
    add_round_to_argument(chain)
    chain.add_argument("--student", help="distill without prune: the architecture to train")
    chain.add_argument("--epochs", type=int,
                       help=f"training after pruning / of the student (default {ChainSettings.epochs})")
    chain.add_argument("--lr", type=float, help=f"training peak lr (default {ChainSettings.lr:g})")
    chain.add_argument("--batch-size", type=int, help=f"training batch (default {ChainSettings.batch_size})")
    add_precision_argument(chain)
    chain.add_argument("--alpha", type=float,
                       help=f"distill: weight of the soft targets (default {ChainSettings.alpha:g})")
    chain.add_argument("--temperature", type=float,
                       help=f"distill: softening temperature (default {ChainSettings.temperature:g})")
    chain.add_argument("--calib-images", type=int,
                       help=f"quantize: calibration images (default {ChainSettings.calib_images})")
    add_int8_target_argument(chain, "quantize: ")
    chain.set_defaults(run=cmd_compress)


def cmd_compress(args: argparse.Namespace, console) -> None:
    from ..compress.chain import compress

    settings, given = chain_settings(args)
    steps = [step.strip() for step in args.steps.split(",") if step.strip()]
    records = compress(args.checkpoint, args.data, steps, args.out, settings, given)
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
