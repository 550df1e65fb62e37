"""``resnetlab models`` and ``summary``: the architectures, their parameters and MACs, stage by stage."""
from __future__ import annotations

import argparse
import fnmatch

import torch
from rich.console import Console
from rich.table import Table

from ..complexity import count_parameters, stage_table
from ..errors import ResnetlabError
from ..models import aliases_of, create_model, list_models


MACS_NOTE = "MACs are multiply-accumulates (1 MAC = 2 FLOPs) for one image; torchvision's 'GFLOPS' are GMACs."


def add_parsers(commands) -> None:
    models = commands.add_parser("models", help="list the architectures with parameters and MACs")
    models.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    models.add_argument("--input-size", type=parse_input_size, help="e.g. 224 or 224x160 "
                        "(default: each model's own, 224 for ImageNet nets, 32 for CIFAR nets)")
    models.set_defaults(run=cmd_models)

    summary = commands.add_parser("summary", help="per-stage table of one architecture")
    summary.add_argument("name", help="a model name from `resnetlab models`")
    summary.add_argument("--input-size", type=parse_input_size, help="e.g. 224, 448 or 224x160")
    summary.add_argument("--num-classes", type=int, help="classifier width (default: the model's)")
    summary.set_defaults(run=cmd_summary)


def parse_input_size(text: str) -> tuple[int, int]:
    """``224`` or ``224x160`` (height x width)."""
    try:
        sides = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must look like 224 or 224x160, not {text!r}")
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"input size must look like 224 or 224x160, not {text!r}")
    return (sides[0], sides[-1])


def _meta_model(name: str, **options):
    # Shapes are all the tables need: build on the meta device, no memory or init time.
    with torch.device("meta"):
        return create_model(name, **options)


def cmd_models(args: argparse.Namespace, console: Console) -> None:
    names = [name for name in list_models() if args.pattern is None
             or any(fnmatch.fnmatch(known, args.pattern) for known in (name, *aliases_of(name)))]
    if not names:
        raise ResnetlabError(f"no model matches {args.pattern!r}; `resnetlab models` lists them all")
    table = Table(title="resnetlab models", caption=MACS_NOTE)
    for column in ("model", "also named", "block", "blocks per stage", "params", "GMACs", "input"):
        table.add_column(column, justify="left" if column in ("model", "also named", "block") else "right")
    for name in names:
        model = _meta_model(name)
        rows = stage_table(model, args.input_size)
        size = args.input_size or (model.preprocessing.input_size,) * 2
        config = model.config
        block = "/".join(config.stage_blocks) if getattr(config, "stage_blocks", None) else config.block
        table.add_row(name, ", ".join(aliases_of(name)), block, "-".join(map(str, config.layers)),
                      f"{count_parameters(model) / 1e6:.2f}M", f"{sum(r.macs for r in rows) / 1e9:.3f}",
                      f"{size[0]}x{size[1]}")
    console.print(table)


def cmd_summary(args: argparse.Namespace, console: Console) -> None:
    options = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = _meta_model(args.name, **options)
    rows = stage_table(model, args.input_size)
    total_params, total_macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    height, width = args.input_size or (model.preprocessing.input_size,) * 2
    table = Table(title=f"{args.name} at {height}x{width}: {total_params:,} parameters, "
                        f"{total_macs / 1e9:.2f} GMACs ({2 * total_macs / 1e9:.2f} GFLOPs)",
                  caption=MACS_NOTE)
    for column in ("stage", "output", "blocks", "block structure", "channels", "params", "MMACs"):
        table.add_column(column, justify="left" if column in ("stage", "block structure") else "right")
    for row in rows:
        table.add_row(row.name, "x".join(map(str, row.output_size)), str(row.blocks), row.structure,
                      f"{row.in_channels}->{row.out_channels}", f"{row.params:,}", f"{row.macs / 1e6:,.1f}")
    table.add_row("total", "", str(sum(model.config.layers)), "", "", f"{total_params:,}",
                  f"{total_macs / 1e6:,.1f}", style="bold")
    console.print(table)
