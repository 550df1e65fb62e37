"""Benchmark rows for people (a table) and for programs (CSV, JSON)."""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from ..atomic import atomic_path

UNITS_NOTE = ("GMACs: multiply-accumulates per image, 10^9 (1 MAC = 2 FLOPs). ms: per batch. memory MB: what "
              "running the batch takes, 10^6 bytes: the backend's weights, pools and caches plus one call's peak. "
              "% of peak: img/s x 2 x MACs / the FP32 peak below.")


@dataclass
class BenchRow:
    """One model at one setting. Latencies are per batch; ``macs`` and ``throughput`` per image."""

    model: str
    backend: str
    precision: str
    batch_size: int
    input_size: int  # side of the square input, pixels
    params: int
    macs: int
    latency_ms_median: float
    latency_ms_p90: float
    throughput: float  # images per second at the median latency
    memory_mb: float | None  # measure.Measurement.memory_mb
    top1: float | None = None  # accuracy in [0, 1], when someone measured it
    fraction_of_peak: float | None = None  # of the CPU's FP32 peak (hardware.cpu_peak)


COLUMNS = [field.name for field in dataclasses.fields(BenchRow)]


def fraction_of_peak(throughput: float, macs: int, peak_gflops: float) -> float:
    """Share of the peak FLOP rate the model's arithmetic (2 FLOPs per MAC) runs at."""
    return throughput * 2 * macs / (peak_gflops * 1e9)


def print_table(rows: list[BenchRow], console: Console, note: str | None = None) -> None:
    """The rows as a rich table; ``note`` (the peak's derivation) goes into the caption."""
    with_top1 = any(row.top1 is not None for row in rows)
    with_peak = any(row.fraction_of_peak is not None for row in rows)
    # No borders and no padding (the box draws one space between columns), two-line headers:
    # thirteen columns fit in 120 characters without cutting a number.
    table = Table(title="resnetlab bench", caption=UNITS_NOTE + (f"\n{note}" if note else ""),
                  box=box.SIMPLE_HEAD, padding=0)
    headers = ["model", "backend", "precision", "batch", "input\npx", "params", "GMACs", "median\nms", "p90\nms",
               "img/s", "memory\nMB"] + ["top-1\n%"] * with_top1 + ["% of\npeak"] * with_peak
    for header in headers:
        text = header in ("model", "backend", "precision")
        table.add_column(header, justify="left" if text else "right", no_wrap=True)
    for row in rows:
        cells = [row.model, row.backend, row.precision, str(row.batch_size), str(row.input_size),
                 f"{row.params / 1e6:.2f}M", f"{row.macs / 1e9:.3g}", f"{row.latency_ms_median:.1f}",
                 f"{row.latency_ms_p90:.1f}", f"{row.throughput:.1f}", _optional(row.memory_mb, "{:.1f}")]
        if with_top1:
            cells.append(_optional(row.top1, "{:.1%}"))
        if with_peak:
            cells.append(_optional(row.fraction_of_peak, "{:.0%}"))
        table.add_row(*cells)
    console.print(table)


def write_csv(rows: list[BenchRow], path: Path) -> None:
    """One line per row, the ``BenchRow`` fields as columns; an empty cell is None."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def write_json(rows: list[BenchRow], path: Path, settings: dict | None = None) -> None:
    """``{"settings": ..., "rows": [...]}``: the results with what produced them."""
    document = {"settings": settings or {}, "rows": [dataclasses.asdict(row) for row in rows]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")


def _optional(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value).rstrip("%")
