"""The CPU's FP32 compute peak, derived from /proc/cpuinfo, and the sgemm rate it achieves.

peak = cores used x clock x FLOP per cycle per core, where FLOP per cycle = FP32 lanes per
vector x 2 (a fused multiply-add is two FLOPs) x 2 FMA pipes (assumed: true of the x86 server
cores of the last decade). Lanes: 16 with AVX-512, 8 with AVX2+FMA, 4 otherwise. AMD family
25 (Zen 3 and Zen 4) runs 512-bit instructions on 256-bit pipes, so 8 lanes there.
"""
from __future__ import annotations

import contextlib
import platform
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
FMA_FLOPS = 2
FMA_PIPES = 2


@dataclass(frozen=True)
class CpuPeak:
    gflops: float | None  # FP32 peak of the cores used, 10^9 FLOP/s; None when it cannot be derived
    cores: int  # physical cores the peak counts
    ghz: float | None
    flop_per_cycle: int | None  # per core
    description: str  # one line: how the number was derived, or why there is none


def parse_cpu_peak(cpuinfo: str, cores_used: int) -> CpuPeak:
    """The peak of ``cores_used`` cores (capped at the physical cores) of the CPU ``cpuinfo`` describes."""
    processors = [fields for fields in map(_fields, re.split(r"\n\s*\n", cpuinfo)) if "processor" in fields]
    if not processors:
        return CpuPeak(None, cores_used, None, None, "FP32 peak unknown: /proc/cpuinfo lists no processor")
    first = processors[0]
    physical = {(p.get("physical id"), p.get("core id")) for p in processors} if "core id" in first \
        else set(range(len(processors)))
    cores = max(1, min(cores_used, len(physical)))
    if "flags" not in first or "cpu MHz" not in first:
        missing = "flags" if "flags" not in first else "cpu MHz"
        return CpuPeak(None, cores, None, None, f"FP32 peak unknown: /proc/cpuinfo has no '{missing}' line")
    flags = set(first["flags"].split())
    ghz = float(first["cpu MHz"]) / 1e3
    if "avx512f" in flags and first.get("vendor_id") == "AuthenticAMD" and first.get("cpu family") == "25":
        lanes, vector = 8, "AMD family 25 runs AVX-512 on 256-bit pipes"
    elif "avx512f" in flags:
        lanes, vector = 16, "AVX-512"
    elif {"avx2", "fma"} <= flags:
        lanes, vector = 8, "AVX2+FMA"
    else:
        lanes, vector = 4, "no AVX2+FMA: 128-bit SSE"
    flop_per_cycle = lanes * FMA_FLOPS * FMA_PIPES
    gflops = cores * ghz * flop_per_cycle
    return CpuPeak(gflops, cores, ghz, flop_per_cycle, (
        f"FP32 peak {gflops:.0f} GFLOP/s = {cores} core{'s' if cores > 1 else ''} x {ghz:.2f} GHz "
        f"x {flop_per_cycle} FLOP/cycle ({vector}: {lanes} lanes x {FMA_FLOPS} for FMA x {FMA_PIPES} pipes "
        "assumed); the clock is /proc/cpuinfo's 'cpu MHz', the nominal one on VMs: boost can exceed it"))


def cpu_peak(cores_used: int, cpuinfo: Path = CPUINFO) -> CpuPeak:
    """``parse_cpu_peak`` of this machine; a peak of None, with the reason, off Linux."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return CpuPeak(None, cores_used, None, None,
                       f"FP32 peak unknown: no {cpuinfo} to read on {platform.system() or 'this system'}")
    return parse_cpu_peak(text, cores_used)


def sgemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    """FP32 matrix-product rate torch achieves here, GFLOP/s: the peak's reality check."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool start and kernel choice
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(seconds) / 1e9


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """Run torch's CPU kernels on ``count`` threads (None: as set) inside; yields the count in use."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX): there bf16 autocast pays."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.MULTILINE).group(1).split()) if "flags" in text else set()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _fields(block: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}
