"""Benchmark rows as pictures: throughput against MACs, latency against input size, accuracy
against throughput. Each is drawn only when the rows hold what it compares."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

from ..atomic import atomic_path
from .report import BenchRow

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_plots(rows: list[BenchRow], directory: Path) -> list[Path]:
    """PNGs under ``directory``; returns the paths written."""
    written = [_throughput_vs_macs(rows, directory / "throughput_vs_macs.png")]
    if len({row.input_size for row in rows}) > 1:
        written.append(_latency_vs_input_size(rows, directory / "latency_vs_input_size.png"))
    if any(row.top1 is not None for row in rows):
        written.append(_accuracy_vs_throughput(rows, directory / "accuracy_vs_throughput.png"))
    return written


def _setting(row: BenchRow) -> str:
    return f"{row.backend} {row.precision}, batch {row.batch_size}"


def _throughput_vs_macs(rows: list[BenchRow], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 5))
    for setting, group in _grouped(rows, _setting).items():
        axes.plot([r.macs / 1e9 for r in group], [r.throughput for r in group], "o", label=setting)
        for row in group:
            axes.annotate(f"{row.model} @{row.input_size}", (row.macs / 1e9, row.throughput), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
    axes.set(xlabel="GMACs per image", ylabel="images / s", title="throughput against arithmetic")
    return _save(figure, axes, path)


def _latency_vs_input_size(rows: list[BenchRow], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 5))
    for label, group in _grouped(rows, lambda r: f"{r.model}, {_setting(r)}").items():
        group = sorted(group, key=lambda r: r.input_size)
        axes.plot([r.input_size for r in group], [r.latency_ms_median for r in group], "o-", label=label)
    axes.set(xlabel="input side, pixels", ylabel="median latency per batch, ms", title="latency against input size")
    return _save(figure, axes, path)


def _accuracy_vs_throughput(rows: list[BenchRow], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 5))
    measured = [row for row in rows if row.top1 is not None]
    for setting, group in _grouped(measured, _setting).items():
        axes.plot([r.throughput for r in group], [100 * r.top1 for r in group], "o", label=setting)
        for row in group:
            axes.annotate(row.model, (row.throughput, 100 * row.top1), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
    axes.set(xlabel="images / s", ylabel="top-1 accuracy, %", title="accuracy against throughput")
    return _save(figure, axes, path)


def _grouped(rows: list[BenchRow], key) -> dict[str, list[BenchRow]]:
    groups = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def _save(figure, axes, path: Path) -> Path:
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path
