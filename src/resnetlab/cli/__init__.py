"""The ``resnetlab`` command line: the entry point, and a module per command group that adds its commands."""
from __future__ import annotations

import argparse
import errno
import logging
import sys

from rich.console import Console

from ..errors import ResnetlabError
from . import bench, compress, evaluation, explain, export, retrieval, serve, training, weights, zoo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnetlab", description="The ResNet family on PyTorch: build, train, evaluate, deploy and measure.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (zoo, retrieval, explain, training, evaluation, bench, export, compress, serve, weights):
        group.add_parsers(commands)
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
