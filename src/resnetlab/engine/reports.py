"""Evaluation reports for people: the confusion matrix as CSV and as a picture."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib
import torch

from ..atomic import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_confusion_matrix(confusion: torch.Tensor, class_names: list[str], out_dir: Path) -> tuple[Path, Path]:
    """``confusion.csv`` (rows: true class, columns: predicted) and ``confusion.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, confusion.tolist()):
        writer.writerow([name, *row])
    csv_path, png_path = out_dir / "confusion.csv", out_dir / "confusion.png"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(text.getvalue())

    # Row-normalised, so each row shows where that class's images went.
    fractions = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    side = max(4.0, 0.45 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(side + 1, side))
    image = axes.imshow(fractions.numpy(), cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set(xlabel="predicted", ylabel="true", title="confusion matrix (row-normalised)")
    if len(class_names) <= 20:
        for (row, column), count in zip(((r, c) for r in range(len(class_names)) for c in range(len(class_names))),
                                        confusion.flatten().tolist()):
            color = "white" if fractions[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", fontsize=8, color=color)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return csv_path, png_path
