"""``resnetlab embed`` and ``search``: a folder of images as a search index, and the nearest images to a query."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from ..data.folders import find_images
from ..errors import ConfigError, DataError
from ..image_input import check_reads_image_files, normalize, read_crop
from ..models import load_model
from ..pretrained.catalog import is_pretrained_tag
from ..retrieval import (EmbeddingIndex, EmbedSettings, SearchSettings, embed, embed_images, folder_labels, load_index,
                         save_index, search)


def add_parsers(commands) -> None:
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


def cmd_embed(args: argparse.Namespace, console: Console) -> None:
    settings = EmbedSettings(checkpoint=args.checkpoint, folder=args.dir, out=args.out, batch_size=args.batch_size)
    paths = find_images(settings.folder)  # before the model loads: an empty folder fails at once
    model = load_model(settings.checkpoint)
    check_reads_image_files(model.config.in_chans)
    embedded = embed_images(model, paths, settings.batch_size)
    for bad in embedded.skipped:
        print(f"skipped {bad.reason}", file=sys.stderr)
    if not embedded.paths:
        raise DataError(f"none of the {len(paths)} image files in {settings.folder} could be read")
    index = EmbeddingIndex(embedded.embeddings, [str(p.resolve()) for p in embedded.paths],
                           labels=folder_labels(embedded.paths, settings.folder),
                           checkpoint=settings.checkpoint if is_pretrained_tag(settings.checkpoint)
                           else str(Path(settings.checkpoint).resolve()))
    save_index(index, settings.out)
    print(f"wrote {settings.out}: {len(index.paths)} embeddings of dimension {index.embeddings.shape[1]}"
          + (f", {len(embedded.skipped)} unreadable files skipped" if embedded.skipped else ""))


def cmd_search(args: argparse.Namespace, console: Console) -> None:
    settings = SearchSettings(index=args.index, query=args.query, k=args.k, checkpoint=args.checkpoint)
    index = load_index(settings.index)
    checkpoint = settings.checkpoint or index.checkpoint
    if checkpoint is None:
        raise ConfigError(f"{settings.index} does not name its checkpoint; pass --checkpoint")
    if settings.checkpoint is None and not Path(checkpoint).is_file() and not is_pretrained_tag(checkpoint):
        raise ConfigError(f"{settings.index} was built with {checkpoint}, which no longer exists; "
                          "pass --checkpoint with the same weights")
    model = load_model(checkpoint).eval()
    check_reads_image_files(model.config.in_chans)
    query = normalize(read_crop(settings.query, model.preprocessing), model.preprocessing)
    scores, positions = search(index, embed(model, query.unsqueeze(0)), settings.k)
    hits = [{"rank": rank, "score": round(float(score), 6), "path": index.paths[position],
             "label": index.labels[position] if index.labels else None}
            for rank, (score, position) in enumerate(zip(scores[0].tolist(), positions[0].tolist()), 1)]
    if args.json:
        print(json.dumps(hits, indent=2))
        return
    # Plain lines rather than a table: paths stay whole, to copy or pipe.
    print(f"{len(hits)} nearest of {len(index.paths)} to {settings.query} (cosine similarity):")
    for hit in hits:
        label = f"  {hit['label']}" if hit["label"] is not None else ""
        print(f"{hit['rank']:>3}  {hit['score']:.4f}{label}  {hit['path']}")
