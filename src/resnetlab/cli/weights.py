"""``resnetlab weights``: list, download, verify and import the pretrained weights of the catalog."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import ResnetlabError
from ..models import create_model, load_weights
from ..pretrained import get_weights, import_file, list_pretrained, pretrained_info, weights_dir
from ..pretrained.store import cached_file, cached_files, fetch, verify


def add_parsers(commands) -> None:
    weights = commands.add_parser("weights", help="pretrained weights by name: list, download, verify, import")
    actions = weights.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the pretrained tags, with top-1, sizes, license, and whether cached")
    listing.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet50*' or '*in21k*'")
    listing.add_argument("--json", action="store_true", help="print every field of each tag as JSON")
    listing.add_argument("--dir", type=Path, help="the weights folder (default: RESNETLAB_WEIGHTS_DIR or "
                                                  "$TORCH_HOME/hub/checkpoints)")
    listing.set_defaults(run=cmd_list)

    fetching = actions.add_parser("download", help="fetch tags' files (resumes a partial download; checked)")
    fetching.add_argument("tags", nargs="+", metavar="TAG")
    fetching.add_argument("--dir", type=Path, help="where to put them (default: the weights folder)")
    fetching.set_defaults(run=cmd_download)

    checking = actions.add_parser("verify", help="check the checksum of every cached pretrained file")
    checking.add_argument("--dir", type=Path, help="the weights folder to check (default: the weights folder)")
    checking.set_defaults(run=cmd_verify)

    importing = actions.add_parser("import", help="check a file fetched by hand against a tag and place it")
    importing.add_argument("file", type=Path)
    importing.add_argument("--tag", required=True, help="the tag whose weights the file holds")
    importing.add_argument("--dir", type=Path, help="where to place it (default: the weights folder)")
    importing.set_defaults(run=cmd_import)


def cmd_list(args: argparse.Namespace, console: Console) -> None:
    tags = list_pretrained(args.pattern)
    if not tags:
        raise ResnetlabError(f"no pretrained tag matches {args.pattern!r}; `resnetlab weights list` shows them all")
    directory = args.dir or weights_dir()
    if args.json:
        print(json.dumps([{**pretrained_info(tag), "cached": cached_file(get_weights(tag), directory) is not None}
                          for tag in tags], indent=1))
        return
    table = Table(title=f"pretrained weights (folder: {directory})", box=box.SIMPLE_HEAD,
                  caption="top-1: the source's published ImageNet-1k figure, at the test input size "
                          "(--json for top-5, URLs, checksums, preprocessing)")
    for column in ("tag", "params", "classes", "top-1", "train/test px", "file MB", "license", "cached"):
        table.add_column(column, justify="left" if column in ("tag", "license", "cached") else "right",
                         no_wrap=column != "tag", overflow="fold")  # a long tag folds; the figures stay whole
    for tag in tags:
        entry = get_weights(tag)
        size = entry.preprocessing
        table.add_row(tag, f"{entry.params / 1e6:.2f}M", str(entry.num_classes), _figure(entry.top1),
                      f"{size['train_input_size']}/{size['input_size']}", f"{entry.file_mb:.1f}",
                      entry.license or "unknown", "yes" if cached_file(entry, directory) else "no")
    console.print(table)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def cmd_download(args: argparse.Namespace, console: Console) -> None:
    entries = [get_weights(tag) for tag in args.tags]  # every tag checked before anything is fetched
    for entry in entries:
        path = fetch(entry.tag, args.dir)
        print(f"{entry.tag}: {path}")


def cmd_verify(args: argparse.Namespace, console: Console) -> None:
    found = cached_files(args.dir)
    if not found:
        print(f"no pretrained file is cached in {args.dir or weights_dir()} or the Hugging Face cache")
        return
    bad = []
    for tag, path, spec in found:
        try:
            verify(path, spec, tag)
            print(f"ok   {tag}: {path}")
        except ResnetlabError as error:
            bad.append(tag)
            print(f"BAD  {error}")
    if bad:
        raise ResnetlabError(f"{len(bad)} of {len(found)} cached files failed their check: {', '.join(bad)}")


def cmd_import(args: argparse.Namespace, console: Console) -> None:
    entry = get_weights(args.tag)

    def fits(path: Path) -> None:  # a file whose tag publishes no checksum must at least be these weights' shape
        load_weights(create_model(entry.arch, num_classes=entry.num_classes), path)

    target = import_file(args.file, entry.tag, args.dir, fits=fits)
    print(f"{entry.tag}: placed {args.file} at {target}")
