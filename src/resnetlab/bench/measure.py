"""Time inference callables on one input: one alone (warm-up, timed repeats, then one call for memory),
or several side by side in interleaved rounds."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .memory import held_bytes, peak_memory_increase


@dataclass(frozen=True)
class Measurement:
    """Latency of one call on a batch, in milliseconds, over the timed repeats."""

    batch_size: int
    latency_ms_median: float
    latency_ms_p90: float
    latency_ms_iqr: float  # spread: 75th minus 25th percentile
    throughput: float  # images per second at the median latency
    memory_mb: float | None  # held beyond the baseline + one call's peak, 10^6 bytes; None if unknown


def measure(run: Callable[[torch.Tensor], object], images: torch.Tensor, warmup: int = 3,
            repeats: int = 10, held_before: int | None = None) -> Measurement:
    """Call ``run(images)`` ``warmup`` times untimed, then ``repeats`` times timed one by one.

    Warm-up lets lazy work (compilation, kernel selection, first-touch allocation) happen
    before the clock starts. Memory is what is held after the calls beyond ``held_before``
    (``memory.held_bytes`` taken before ``run`` was built, so its weights, pools and caches
    count; by default, taken now), plus the peak of one further call on top. That call comes
    after the timed ones so that the page faults of a freshly emptied heap do not land in the
    timings.
    """
    if warmup < 0:
        raise ConfigError(f"warm-up runs must be 0 or more, not {warmup}")
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, not {repeats}")
    device = images.device
    if held_before is None:
        held_before = held_bytes(device)
    with torch.no_grad():
        for _ in range(warmup):
            run(images)
        seconds = _timed_calls(run, images, repeats)
        held_after = held_bytes(device)
        peak = peak_memory_increase(lambda: run(images), device)
    memory = None if None in (held_before, held_after, peak) else held_after - held_before + peak
    milliseconds = np.array(seconds) * 1e3
    p25, median, p75, p90 = np.percentile(milliseconds, [25, 50, 75, 90])
    return Measurement(batch_size=len(images), latency_ms_median=float(median), latency_ms_p90=float(p90),
                       latency_ms_iqr=float(p75 - p25), throughput=float(len(images) * 1e3 / median),
                       memory_mb=None if memory is None else memory / 1e6)


def side_by_side(runs: Sequence[Callable[[torch.Tensor], object]], images: torch.Tensor, rounds: int = 5,
                 calls: int = 10, warmup: int = 3) -> list[list[float]]:
    """Each of ``runs``' median latency on ``images`` in every round, in milliseconds.

    After ``warmup`` untimed calls each, every round times ``calls`` calls of each run in turn, so
    that a busy moment of the machine hits them all alike: compare the runs by their medians over
    the rounds. Timing each alone, minutes apart, can make the faster of two models look slower.
    """
    if rounds < 1 or calls < 1:
        raise ConfigError(f"rounds and calls must be at least 1, not {rounds} and {calls}")
    medians: list[list[float]] = [[] for _ in runs]
    with torch.no_grad():
        for run in runs:
            for _ in range(warmup):
                run(images)
        for _ in range(rounds):
            for run, times in zip(runs, medians):
                times.append(statistics.median(_timed_calls(run, images, calls)) * 1e3)
    return medians


def _timed_calls(run: Callable[[torch.Tensor], object], images: torch.Tensor, calls: int) -> list[float]:
    """Seconds of each of ``calls`` calls of ``run(images)``, one by one."""
    seconds = []
    for _ in range(calls):
        _synchronize(images.device)
        start = time.perf_counter()
        run(images)
        _synchronize(images.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _synchronize(device: torch.device) -> None:
    # CUDA calls return before the GPU finishes; without this the clock times the launch only.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
