"""What the CPU can compute: its FP32 peak, the sgemm rate it achieves, and its INT8 dot products.

peak = cores used x clock x FLOP per cycle, where FLOP per cycle = FP32 lanes per FMA x 2 (a fused
multiply-add is two FLOPs) x 2 FMA pipes (assumed: true of the x86 server cores of the last decade).
Lanes are the narrower of the widest vector instructions (512 bits with AVX-512, 256 with AVX2+FMA,
128 otherwise) and the width of the FMA pipes: 128 bits on AMD's Zen 1 and Zen+ (family 23 below
model 0x30, and Hygon's family 24, built on them), which split each 256-bit FMA in two; 256 bits on
AMD family 25 (Zen 3 and Zen 4: Zen 4 runs AVX-512 on them); the instruction width elsewhere.

INT8: x86 CPUs without VNNI multiply uint8 by int8 with VPMADDUBSW, which adds pairs of products into
16 bits and clips the sum when it exceeds 32,767 (255 x 127 x 2 does); VNNI (AVX-512 VNNI, AVX-VNNI)
and AMX add into 32 bits. ``int8_support`` tells which the CPU has, for ``compress.quantize`` to lay
INT8 weights out so that they cannot clip where that matters.
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
    lanes, vector = _fp32_lanes(first, flags)
    flop_per_cycle = lanes * FMA_FLOPS * FMA_PIPES
    gflops = cores * ghz * flop_per_cycle
    return CpuPeak(gflops, cores, ghz, flop_per_cycle, (
        f"FP32 peak {gflops:.0f} GFLOP/s = {cores} core{'s' if cores > 1 else ''} x {ghz:.2f} GHz "
        f"x {flop_per_cycle} FLOP/cycle ({vector}: {lanes} FP32 lanes x {FMA_FLOPS} for FMA x {FMA_PIPES} "
        "pipes assumed); the clock is /proc/cpuinfo's 'cpu MHz', the nominal one on VMs: boost can exceed it"))


def _fp32_lanes(first: dict[str, str], flags: set[str]) -> tuple[int, str]:
    """FP32 lanes per FMA on this core, and how that was decided."""
    if "avx512f" in flags:
        instruction_bits, instructions = 512, "AVX-512"
    elif {"avx2", "fma"} <= flags:
        instruction_bits, instructions = 256, "AVX2+FMA"
    else:
        instruction_bits, instructions = 128, "no AVX2+FMA: 128-bit SSE"
    pipe_bits, pipes = _fma_pipe_width(first)
    if pipe_bits is None:
        return instruction_bits // 32, f"{instructions} on {instruction_bits}-bit FMA pipes, assumed"
    return min(pipe_bits, instruction_bits) // 32, f"{instructions} on {pipes}"


def _fma_pipe_width(first: dict[str, str]) -> tuple[int | None, str]:
    """The FMA pipes' width in bits where it is narrower than some instructions; None: as wide as any."""
    vendor, family = first.get("vendor_id"), int(first.get("cpu family", "0") or 0)
    model = int(first.get("model", "0") or 0)
    if (vendor == "AuthenticAMD" and (family < 23 or (family == 23 and model < 0x30))) \
            or (vendor == "HygonGenuine" and family == 24):
        return 128, f"the 128-bit FMA pipes of Zen 1/Zen+ or older, {vendor} family {family} model {model:#x}"
    if vendor == "AuthenticAMD" and family == 25:
        return 256, f"the 256-bit FMA pipes of Zen 3/Zen 4, AMD family 25 model {model:#x}"
    return None, ""


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
    return bool((_cpu_flags(text) or set()) & {"avx512_bf16", "amx_bf16"})


INT8_DOT_PRODUCTS = {"amx_int8": "AMX", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI"}  # best first


@dataclass(frozen=True)
class Int8Support:
    """How the CPU computes INT8 dot products."""

    instruction: str | None  # the dot-product instruction that adds into 32 bits; None: there is none
    saturates: bool  # uint8 x int8 sums can clip: x86 without VNNI, or a CPU not known
    description: str  # one line, for the user
    known: bool = True  # False: nothing told what the CPU is (no /proc/cpuinfo, say)


ARM_INT8 = Int8Support(None, False, "Arm CPU: its INT8 kernels add into 32 bits and cannot clip")


def parse_int8_support(cpuinfo: str) -> Int8Support:
    """The INT8 dot products of the CPU ``cpuinfo`` (``/proc/cpuinfo``'s text) describes."""
    flags = _cpu_flags(cpuinfo)
    if flags is None:
        if re.search(r"^(Features|CPU implementer)\s*:", cpuinfo, re.MULTILINE):  # an Arm CPU
            return ARM_INT8
        return Int8Support(None, True, "CPU not recognised: INT8 laid out as for x86 without VNNI, "
                                       "which runs correctly on every CPU", known=False)
    found = next((name for flag, name in INT8_DOT_PRODUCTS.items() if flag in flags), None)
    if found:
        return Int8Support(found, False, f"this CPU has {found}: INT8 sums cannot clip")
    return Int8Support(None, True, "this CPU has no VNNI (nor AMX): its INT8 kernels add pairs of uint8 x "
                                   "int8 products into 16 bits, which can clip")


def int8_support(cpuinfo: Path = CPUINFO) -> Int8Support:
    """``parse_int8_support`` of this machine; off Linux, an Arm CPU (Apple silicon) or a CPU not known."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        if platform.machine().lower() in ("arm64", "aarch64"):
            return ARM_INT8
        text = ""
    return parse_int8_support(text)


def _cpu_flags(cpuinfo: str) -> set[str] | None:
    """The x86 feature flags of /proc/cpuinfo's first processor; None where it lists none (Arm, or no text)."""
    line = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    return None if line is None else set(line.group(1).split())


def _fields(block: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}
