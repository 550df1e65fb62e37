"""The ``resnetlab`` command line."""
from __future__ import annotations

import argparse
import errno
import fnmatch
import json
import logging
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .atomic import atomic_path
from .complexity import count_parameters, stage_table
from .errors import ConfigError, DataError, ResnetlabError
from .explain import grad_cam, overlay_heatmap
from .image_input import check_reads_image_files, normalize, read_crop
from .models import aliases_of, create_model, list_models, load_model
from .pretrained.catalog import is_pretrained_tag
from .cli_bench import add_bench_parser
from .cli_deploy import add_export_parser
from .cli_serve import add_serve_parser
from .cli_training import add_demo_parser, add_evaluation_parsers, add_train_parser
from .cli_weights import add_weights_parser
from .data.folders import find_images
from .retrieval import (EmbeddingIndex, embed, embed_images, folder_labels, load_index,
                        save_index, search)

MACS_NOTE = "MACs are multiply-accumulates (1 MAC = 2 FLOPs) for one image; torchvision's 'GFLOPS' are GMACs."


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


def cmd_embed(args: argparse.Namespace, console: Console) -> None:
    if args.out.suffix != ".npz":
        raise ConfigError(f"--out must end in .npz, not {args.out.name}")
    paths = find_images(args.dir)  # before the model loads: an empty folder fails at once
    model = load_model(args.checkpoint)
    check_reads_image_files(model.config.in_chans)
    embedded = embed_images(model, paths, args.batch_size)
    for bad in embedded.skipped:
        print(f"skipped {bad.reason}", file=sys.stderr)
    if not embedded.paths:
        raise DataError(f"none of the {len(paths)} image files in {args.dir} could be read")
    index = EmbeddingIndex(embedded.embeddings, [str(p.resolve()) for p in embedded.paths],
                           labels=folder_labels(embedded.paths, args.dir),
                           checkpoint=args.checkpoint if is_pretrained_tag(args.checkpoint)
                           else str(Path(args.checkpoint).resolve()))
    save_index(index, args.out)
    print(f"wrote {args.out}: {len(index.paths)} embeddings of dimension {index.embeddings.shape[1]}"
          + (f", {len(embedded.skipped)} unreadable files skipped" if embedded.skipped else ""))


def cmd_search(args: argparse.Namespace, console: Console) -> None:
    index = load_index(args.index)
    checkpoint = args.checkpoint or index.checkpoint
    if checkpoint is None:
        raise ConfigError(f"{args.index} does not name its checkpoint; pass --checkpoint")
    if args.checkpoint is None and not Path(checkpoint).is_file() and not is_pretrained_tag(checkpoint):
        raise ConfigError(f"{args.index} was built with {checkpoint}, which no longer exists; "
                          "pass --checkpoint with the same weights")
    model = load_model(checkpoint).eval()
    check_reads_image_files(model.config.in_chans)
    query = normalize(read_crop(args.query, model.preprocessing), model.preprocessing)
    scores, positions = search(index, embed(model, query.unsqueeze(0)), args.k)
    hits = [{"rank": rank, "score": round(float(score), 6), "path": index.paths[position],
             "label": index.labels[position] if index.labels else None}
            for rank, (score, position) in enumerate(zip(scores[0].tolist(), positions[0].tolist()), 1)]
    if args.json:
        print(json.dumps(hits, indent=2))
        return
    # Plain lines rather than a table: paths stay whole, to copy or pipe.
    print(f"{len(hits)} nearest of {len(index.paths)} to {args.query} (cosine similarity):")
    for hit in hits:
        label = f"  {hit['label']}" if hit["label"] is not None else ""
        print(f"{hit['rank']:>3}  {hit['score']:.4f}{label}  {hit['path']}")


def cmd_explain(args: argparse.Namespace, console: Console) -> None:
    if args.out.suffix.lower() != ".png":
        raise ConfigError(f"--out must end in .png, not {args.out.name}")
    model = load_model(args.checkpoint)
    check_reads_image_files(model.config.in_chans)
    if model.config.num_classes == 0:
        raise ConfigError(f"{args.checkpoint} has no classifier (num_classes=0); explain needs one")
    names = model.class_names or [str(i) for i in range(model.config.num_classes)]
    if args.class_name is not None and args.class_name not in names:
        raise ConfigError(f"unknown class {args.class_name!r}; the model knows {', '.join(names)}")
    crop = read_crop(args.image, model.preprocessing)
    image = normalize(crop, model.preprocessing)
    with torch.no_grad():
        probabilities = model.eval()(image.unsqueeze(0)).softmax(dim=1)[0]
    predicted = int(probabilities.argmax())
    target = predicted if args.class_name is None else names.index(args.class_name)
    heatmap = grad_cam(model, image, target)
    with atomic_path(args.out) as tmp:
        overlay_heatmap(crop, heatmap).save(tmp, format="PNG")
    print(f"predicted {names[predicted]} ({probabilities[predicted]:.1%}); "
          f"wrote the Grad-CAM of {names[target]} over the image to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnetlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    embed_parser = commands.add_parser("embed", help="embed a folder of images into a search index")
    embed_parser.add_argument("--checkpoint", required=True, help="a .safetensors written by save_weights, or a pretrained tag (resnet50.a1_in1k)")
    embed_parser.add_argument("dir", type=Path, help="folder of images, searched recursively")
    embed_parser.add_argument("--out", required=True, type=Path, help="the index to write, e.g. index.npz")
    embed_parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    embed_parser.set_defaults(run=cmd_embed)

    search_parser = commands.add_parser("search", help="the images of an index most similar to a query image")
    search_parser.add_argument("--index", required=True, type=Path, help="written by `resnetlab embed`")
    search_parser.add_argument("query", type=Path, help="the query image")
    search_parser.add_argument("-k", type=int, default=5, help="number of neighbours (default 5)")
    search_parser.add_argument("--checkpoint", help="weights to embed the query with "
                         "(default: the checkpoint the index was built with)")
    search_parser.add_argument("--json", action="store_true", help="print the results as JSON")
    search_parser.set_defaults(run=cmd_search)

    explain_parser = commands.add_parser("explain", help="Grad-CAM heatmap of a prediction, over the image")
    explain_parser.add_argument("--checkpoint", required=True, help="a .safetensors classifier from save_weights, or a pretrained tag")
    explain_parser.add_argument("image", type=Path, help="the image to explain")
    explain_parser.add_argument("--out", required=True, type=Path, help="the PNG to write, e.g. cam.png")
    explain_parser.add_argument("--class", dest="class_name",
                         help="class whose evidence to show (default: the predicted one)")
    explain_parser.set_defaults(run=cmd_explain)
    add_train_parser(commands)
    add_evaluation_parsers(commands)
    add_demo_parser(commands)
    add_bench_parser(commands)
    add_export_parser(commands)
    add_serve_parser(commands)
    add_weights_parser(commands)
    return parser


# A full or read-only disk, or no permission: the user's to fix, said in one line.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
RESUME_HINT = {command: f"; a training run continues from its last finished epoch: resnetlab {command} --resume "
                        "RUN_DIR" for command in ("train", "distill")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; the libraries underneath (ONNX Runtime, OpenVINO, ...) only warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("resnetlab").setLevel(logging.INFO)
    console = Console(width=max(Console().width, 120))
    try:
        args.run(args, console)
    except ResnetlabError as error:
        print(f"resnetlab: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        print(f"resnetlab: error: {error.strerror}{where}; the files written before are intact"
              + RESUME_HINT.get(args.command, ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetlab: interrupted" + RESUME_HINT.get(args.command, ""), file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    return 0
