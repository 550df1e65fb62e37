"""What a run leaves behind for people: metrics.jsonl, TensorBoard events, curves.png, manifest."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import matplotlib
import torch
import yaml

from ..atomic import atomic_path

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_config(run_dir: Path, config_dict: dict) -> Path:
    """config.yaml: `resnetlab train --recipe RUN_DIR/config.yaml` re-runs the run."""
    path = run_dir / "config.yaml"
    write_text_atomically(path, yaml.safe_dump(config_dict, sort_keys=False))
    return path


def write_manifest(run_dir: Path, config_dict: dict, seed: int, data: dict) -> Path:
    manifest = {
        "command": sys.argv,
        "seed": seed,
        "git_revision": _git_revision(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": version("torchvision"), "resnetlab": version("resnetlab")},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "data": data,
        "config": config_dict,
        "config_sha256": hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest(),
    }
    path = run_dir / "manifest.json"
    write_text_atomically(path, json.dumps(manifest, indent=2) + "\n")
    return path


def _git_revision() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


class Logbook:
    """Appends one record per epoch to metrics.jsonl and TensorBoard; draws curves.png."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when logging

        self.path = run_dir / "metrics.jsonl"
        self.curves = run_dir / "curves.png"
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def history(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def keep_epochs_before(self, epoch: int) -> None:
        """After a resume: drop records of epochs the crashed run logged past its last checkpoint."""
        kept = [r for r in self.history() if r["epoch"] < epoch]
        write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def record(self, entry: dict) -> None:
        with open(self.path, "a") as log:
            log.write(json.dumps(entry) + "\n")
        for key, value in entry.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, entry["step"])
        self.writer.flush()

    def draw_curves(self) -> Path:
        history = self.history()
        epochs = [r["epoch"] + 1 for r in history]
        figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
        loss_axes.plot(epochs, [r["train_loss"] for r in history], label="train")
        loss_axes.plot(epochs, [r["val_loss"] for r in history], label="val")
        loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
        if all(r.get("train_top1") is not None for r in history):
            accuracy_axes.plot(epochs, [100 * r["train_top1"] for r in history], label="train")
        accuracy_axes.plot(epochs, [100 * r["val_top1"] for r in history], label="val top-1")
        accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        for axes in (loss_axes, accuracy_axes):
            axes.grid(alpha=0.3)
            axes.legend()
        figure.tight_layout()
        with atomic_path(self.curves) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        plt.close(figure)
        return self.curves

    def close(self) -> None:
        self.writer.close()
