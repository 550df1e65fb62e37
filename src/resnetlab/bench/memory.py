"""Memory measured, not estimated: what a backend keeps between calls, and the peak of one call.

CUDA: the caching allocator's counters. CPU: the operating system's count of resident memory,
after handing freed heap back (glibc keeps freed blocks mapped for reuse, which would hide
one call's activations in the "before").
"""
from __future__ import annotations

import ctypes
import functools
import gc
import re
import threading
from collections.abc import Callable
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
POLL_SECONDS = 0.0005  # where the kernel keeps no resettable peak: how often the RSS is sampled


def held_bytes(device: torch.device) -> int | None:
    """Memory the process holds now for ``device``; None where the platform cannot tell.

    On a CPU, anonymous memory only where Linux reports it: the first call into a library
    pages in its code, which is not memory the model works in.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    _release_free_heap()
    anonymous = _status_bytes("RssAnon")
    if anonymous is not None:
        return anonymous
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def peak_memory_increase(call: Callable[[], object], device: torch.device) -> int | None:
    """Bytes in use at the peak of ``call`` beyond those in use just before it; None if unknown."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    if _reset_kernel_peak():
        # Linux tracks the exact peak resident memory (VmHWM), now reset to the current one.
        before = _status_bytes("VmRSS")
        call()
        return _status_bytes("VmHWM") - before
    return polled_peak_increase(call)


def polled_peak_increase(call: Callable[[], object]) -> int | None:
    """The RSS increase sampled every ``POLL_SECONDS`` while ``call`` runs (any OS, via psutil).

    Peaks shorter than the interval can be missed; None without psutil.
    """
    try:
        import psutil
    except ImportError:
        return None
    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        call()
    finally:
        done.set()
        poller.join()
    return max(peak, process.memory_info().rss) - before


def _release_free_heap() -> None:
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


@functools.cache
def _malloc_trim():
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    except (OSError, TypeError):  # no C library to load by None (Windows)
        return None


def _reset_kernel_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets only the peak resident memory (Linux >= 4.0)
    except OSError:
        return False
    return True


def _status_bytes(field: str) -> int | None:
    try:
        status = _STATUS.read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None
