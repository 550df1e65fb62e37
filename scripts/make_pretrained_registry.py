"""Write resnetlab's registry of pretrained weights from torchvision's Weights enums and timm's pretrained configs.

    python scripts/make_pretrained_registry.py            # rewrites src/resnetlab/pretrained/registry.json
    python scripts/make_pretrained_registry.py --check    # exits 1 when the shipped registry is out of date
    python scripts/make_pretrained_registry.py --hub-checksums   # online: the hub copies' SHA-256 too

Both libraries are importable at development time (timm is a dev dependency); the package itself reads
only the JSON this writes. Every timm pretrained tag of the families resnetlab builds is an entry; the
17 torchvision ResNet-family weights (``IMAGENET1K_V1`` -> ``tv_in1k``, ``IMAGENET1K_V2`` -> ``tv2_in1k``)
are the same tags in timm, and take torchvision's own file, preprocessing and published figures.

Checksums: torchvision and timm's legacy release files carry the first 8 hex digits of their SHA-256 in
their names, which is all that either publishes offline. timm's Hugging Face copies (``model.safetensors``)
have their SHA-256 on the hub only; the hub sends it with each download, and resnetlab checks it there.
``--hub-checksums`` reads them into the registry on a machine that reaches the hub (not run here: no network).
Published top-1/top-5 of timm's weights come from timm's ``results/results-imagenet.csv`` (snapshot beside
this script, with the commit it was taken at).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
from pathlib import Path

import timm
import torch
import torchvision
from timm.data import ImageNetInfo
from timm.models import get_pretrained_cfg
from timm.models._registry import _model_to_module
from torchvision.models._meta import _IMAGENET_CATEGORIES

from resnetlab.complexity import count_parameters
from resnetlab.models.registry import canonical_name, create_model

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnetlab" / "pretrained"
REGISTRY = PACKAGE / "registry.json"
LABELS = PACKAGE / "labels"
TIMM_RESULTS = Path(__file__).with_name("timm_results_imagenet.csv")
TIMM_RESULTS_COMMIT = "0173a139a2c66db3a41ebfe1d8ac4fb02483642e"
# The timm modules whose architectures resnetlab builds (the family issue's 134 names).
TIMM_FAMILIES = ("resnet", "resnetv2", "res2net", "resnest", "sknet", "hrnet")
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights", "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
    "resnext101_64x4d": "ResNeXt101_64X4D_Weights", "wide_resnet50_2": "Wide_ResNet50_2_Weights",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights",
}
TORCHVISION_TAGS = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}
# Label sets by class count, as timm's ImageNetInfo names them.
LABEL_SETS = {1000: "imagenet-1k", 11821: "imagenet-12k", 21843: "imagenet-21k-goog"}
HUB = "https://huggingface.co"


def timm_tags() -> list[str]:
    return [tag for tag in timm.list_pretrained() if _model_to_module.get(tag.split(".")[0]) in TIMM_FAMILIES]


def timm_results() -> dict[str, dict]:
    with open(TIMM_RESULTS, newline="") as file:
        return {row["model"]: row for row in csv.DictReader(file)}


def sha256_prefix(file_name: str) -> str | None:
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) if match else None


def release_file(url: str) -> dict:
    name = url.rsplit("/", 1)[1]
    return {"url": url, "file_name": name, "format": "pth", "sha256": None, "sha256_prefix": sha256_prefix(name),
            "hf_hub_id": None}


def hub_file(hf_hub_id: str, tag: str) -> dict:
    # timm's copy on the hub; named after the tag here, since every hub repo calls its file model.safetensors.
    return {"url": f"{HUB}/{hf_hub_id}/resolve/main/model.safetensors", "file_name": f"{tag}.safetensors",
            "format": "safetensors", "sha256": None, "sha256_prefix": None, "hf_hub_id": hf_hub_id}


def timm_preprocessing(cfg) -> dict:
    # timm's published figures are measured at the test size where a config gives one.
    size = (cfg.test_input_size or cfg.input_size)[-1]
    crop_pct = cfg.test_crop_pct or cfg.crop_pct
    return {"train_input_size": cfg.input_size[-1], "input_size": size, "resize_size": math.floor(size / crop_pct),
            "crop_pct": crop_pct, "interpolation": cfg.interpolation, "mean": list(cfg.mean), "std": list(cfg.std)}


def entry_for(tag: str, results: dict[str, dict]) -> dict:
    cfg = get_pretrained_cfg(tag)
    arch = canonical_name(cfg.architecture)
    with torch.device("meta"):
        model = create_model(arch, num_classes=cfg.num_classes)
    files = [release_file(cfg.url)] if cfg.url else []
    files.append(hub_file(cfg.hf_hub_id, tag))
    row = results.get(tag)
    entry = {
        "arch": arch, "num_classes": cfg.num_classes, "label_set": LABEL_SETS.get(cfg.num_classes),
        "source": "timm", "files": files, "params": count_parameters(model),
        # timm's files hold fp32 tensors: their size is the state dict's bytes and a small header.
        "file_mb": round(sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6, 2),
        "preprocessing": timm_preprocessing(cfg), "license": cfg.license,
        "top1": float(row["top1"]) if row else None, "top5": float(row["top5"]) if row else None,
        "metrics_source": (f"timm results/results-imagenet.csv @ {TIMM_RESULTS_COMMIT[:12]}, at {row['img_size']} px, "
                           f"crop {row['crop_pct']}" if row else None),
        "origin": cfg.origin_url, "paper": cfg.paper_ids,
    }
    arch_name, tv_tag = tag.split(".", 1)
    if tv_tag in TORCHVISION_TAGS.values():
        entry.update(torchvision_entry(arch_name, tv_tag, entry))
    return entry


def torchvision_entry(arch: str, tag: str, timm_entry: dict) -> dict:
    """What torchvision publishes for the weights timm also holds as ``tag``: its file first, its figures."""
    enum = getattr(torchvision.models, TORCHVISION_WEIGHTS[arch])
    weights = enum[next(name for name, ours in TORCHVISION_TAGS.items() if ours == tag)]
    transform = weights.transforms()
    metrics = weights.meta["_metrics"]["ImageNet-1K"]
    torchvision_file = release_file(weights.url)
    hub_copy = [f for f in timm_entry["files"] if f["hf_hub_id"]]
    return {
        "source": "torchvision", "files": [torchvision_file, *hub_copy], "params": weights.meta["num_params"],
        "file_mb": weights.meta["_file_size"],
        "preprocessing": {"train_input_size": timm_entry["preprocessing"]["train_input_size"],
                          "input_size": transform.crop_size[0], "resize_size": transform.resize_size[0],
                          "crop_pct": round(transform.crop_size[0] / transform.resize_size[0], 4),
                          "interpolation": transform.interpolation.value, "mean": list(transform.mean),
                          "std": list(transform.std)},
        "license": "bsd-3-clause", "top1": metrics["acc@1"], "top5": metrics["acc@5"],
        "metrics_source": f"torchvision {enum.__name__}.{weights.name} meta['_metrics']", "origin": weights.meta["recipe"],
        "paper": None,
    }


def hub_sha256(hf_hub_id: str) -> str:
    """The SHA-256 the hub publishes for a repository's model.safetensors (needs network)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(hf_hub_id, files_metadata=True)
    return next(sibling.lfs.sha256 for sibling in info.siblings if sibling.rfilename == "model.safetensors")


def registry(with_hub_checksums: bool = False) -> dict:
    results = timm_results()
    entries = {tag: entry_for(tag, results) for tag in timm_tags()}
    # A SHA-256 read from the hub once stays in the registry until it is read again.
    shipped = json.loads(REGISTRY.read_text())["weights"] if REGISTRY.is_file() else {}
    known = {spec["url"]: spec["sha256"] for entry in shipped.values() for spec in entry["files"] if spec["sha256"]}
    for entry in entries.values():
        for spec in entry["files"]:
            if spec["hf_hub_id"]:
                spec["sha256"] = hub_sha256(spec["hf_hub_id"]) if with_hub_checksums else known.get(spec["url"])
    return {"format": "resnetlab.pretrained/1", "generated_from": {"timm": timm.__version__,
                                                                   "torchvision": torchvision.__version__.split("+")[0]},
            "weights": entries}


def label_files() -> dict[str, bytes]:
    """Class names per label set: torchvision's ImageNet-1k names, timm's for the larger sets (gzipped)."""
    files = {"imagenet-1k.txt": ("\n".join(_IMAGENET_CATEGORIES) + "\n").encode()}
    for label_set in ("imagenet-12k", "imagenet-21k-goog"):
        names = ImageNetInfo(label_set).label_descriptions()
        files[f"{label_set}.txt.gz"] = gzip.compress(("\n".join(names) + "\n").encode(), mtime=0)
    return files


def rendered(with_hub_checksums: bool = False) -> dict[Path, bytes]:
    out = {REGISTRY: (json.dumps(registry(with_hub_checksums), indent=1) + "\n").encode()}
    out.update({LABELS / name: data for name, data in label_files().items()})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped files differ from a fresh render")
    parser.add_argument("--hub-checksums", action="store_true",
                        help="also write the SHA-256 of each Hugging Face copy, read from the hub (needs network)")
    args = parser.parse_args()
    stale = []
    for path, data in rendered(args.hub_checksums).items():
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    for path in stale:
        print(f"out of date: {path}; run python scripts/make_pretrained_registry.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
