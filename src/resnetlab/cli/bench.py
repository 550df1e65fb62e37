"""The ``resnetlab bench`` command: latency, throughput and memory of models, as a table and files."""
from __future__ import annotations

import argparse
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import ConfigError


def add_parsers(commands) -> None:
    bench = commands.add_parser(
        "bench", help="latency, throughput and peak memory of models per backend, precision and batch",
        description="Measure models on random input. Lists are comma-separated: every combination is one row.")
    bench.add_argument("models", nargs="*", metavar="MODEL",
                       help="names from `resnetlab models` (default: resnet50, or the --checkpoint's)")
    bench.add_argument("--checkpoint", metavar="PATH",
                       help="measure this model file instead: trained weights (.safetensors), or an .onnx, .pt2 or .pt "
                            "from export or quantize, as it is, or a pretrained tag (resnet50.tv2_in1k)")
    bench.add_argument("--data", metavar="DIR",
                       help="with --checkpoint: also the top-1 of each backend and precision on DIR's val/ "
                            "or test/ split (or cifar10), at the checkpoint's preprocessing")
    bench.add_argument("--batch-size", default="1", metavar="N,...", help="images per call, e.g. 1,16 (default 1)")
    bench.add_argument("--input-size", metavar="PIXELS,...",
                       help="side of the square input, e.g. 224,384 (default: the model's own, 224 or 32)")
    bench.add_argument("--precision", default="fp32", metavar="NAME,...", help="e.g. fp32,bf16 (default fp32)")
    bench.add_argument("--backend", default="eager", metavar="NAME,...",
                       help="eager, compile, onnxruntime, openvino or auto, e.g. eager,compile (default eager)")
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    bench.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's, one per core)")
    bench.add_argument("--compare", default="", metavar="LIBRARY,...",
                       help="also time these libraries' same-named models, eager fp32: torchvision, timm or both")
    bench.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed calls before timing (default 3)")
    bench.add_argument("--repeats", type=int, default=10, metavar="N", help="timed calls per row (default 10)")
    bench.add_argument("--csv", type=Path, metavar="PATH", help="also write the rows to this CSV file")
    bench.add_argument("--json", type=Path, metavar="PATH", help="also write the rows and settings to this JSON file")
    bench.add_argument("--plot", type=Path, metavar="DIR", help="also draw PNG plots into DIR")
    bench.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace, console) -> None:
    # Imported here: the backends, timm and matplotlib load only when something is measured.
    from ..hardware import cpu_peak, sgemm_gflops, torch_threads
    from ..bench.plots import write_plots
    from ..bench.report import print_table, write_csv, write_json
    from ..bench.run import BenchSettings, run_benchmark

    settings = BenchSettings(
        models=args.models or ([] if args.checkpoint else ["resnet50"]),
        batch_sizes=_integers("--batch-size", args.batch_size),
        input_sizes=_integers("--input-size", args.input_size) if args.input_size else None,
        precisions=_names(args.precision), backends=_names(args.backend), device=args.device, threads=args.threads,
        compare=_names(args.compare), warmup=args.warmup, repeats=args.repeats, checkpoint=args.checkpoint,
        data=args.data)
    rows = run_benchmark(settings)
    recorded = asdict(settings)  # what the JSON file says the rows were measured with
    note = None
    if torch.device(args.device).type == "cpu":
        with torch_threads(args.threads) as threads:
            peak = cpu_peak(threads)
            achieved = sgemm_gflops()
        cross_check = f"{achieved / peak.gflops:.0%} of it" if peak.gflops else "no peak to compare"
        note = f"{peak.description}. torch.mm 2048x2048 reaches {achieved:.0f} GFLOP/s here ({cross_check})."
        recorded |= {"threads": threads, "cpu_peak_gflops": peak.gflops, "cpu_peak": peak.description,
                     "sgemm_gflops": achieved}
    print_table(rows, console, note)
    recorded |= {"torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        write_json(rows, args.json, recorded)
        print(f"wrote {args.json}")
    if args.plot:
        for path in write_plots(rows, args.plot):
            print(f"wrote {path}")


def _integers(flag: str, text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise ConfigError(f"{flag} takes whole numbers separated by commas, e.g. 1,16, not {text!r}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
