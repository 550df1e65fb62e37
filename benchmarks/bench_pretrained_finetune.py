"""What pretrained weights buy: fine-tune ``resnet18.tv_in1k`` on ants/bees against the same recipe from scratch.

Both runs use the shipped ``finetune_resnet18`` recipe (SGD, backbone at a tenth of the head's lr, warmup +
cosine, ImageNet augmentation) on ``../shared/data/hymenoptera.tar.gz``, same seed, same epochs; only the
starting weights differ. The weights file must be on this machine (``resnetlab weights download
resnet18.tv_in1k`` where there is network, or the file copied into the weights folder): without it the
script says so in one line and exits 1, and the figure stays owed. It never makes up a pretrained file.

    .venv/bin/python benchmarks/bench_pretrained_finetune.py [--epochs 10] [--data ../shared/data/hymenoptera.tar.gz]
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tarfile
import tempfile
from pathlib import Path

from resnetlab import ResnetlabError
from resnetlab.config import config_from_dict, load_recipe
from resnetlab.engine.trainer import train
from resnetlab.pretrained import fetch

TAG = "resnet18.tv_in1k"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera.tar.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    try:
        weights = fetch(TAG)
    except ResnetlabError as error:
        print(f"owed: the fine-tuning figure needs {TAG}'s weights, which this machine cannot get ({error})")
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(args.data) as archive:
            archive.extractall(scratch, filter="data")
        recipe = load_recipe("finetune_resnet18")
        base = config_from_dict({**recipe, "epochs": args.epochs, "data": {**recipe["data"],
                                 "data": str(Path(scratch) / "hymenoptera_data")}})
        results = {}
        for name, start in (("pretrained", TAG), ("scratch", None)):
            config = dataclasses.replace(base, out=str(Path(scratch) / name),
                                         model=dataclasses.replace(base.model, weights=start))
            results[name] = train(config)
    print(f"machine: {platform.processor() or platform.machine()}; weights: {weights}")
    for name, result in results.items():
        print(f"{name:10s} best val top-1 {100 * result.best_top1:.1f}% (epoch {result.best_epoch + 1} "
              f"of {args.epochs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
