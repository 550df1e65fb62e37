"""Which CPUs an INT8 file is laid out for: all 8 bits of the weights where VNNI adds the products
into 32 bits, 7 where AVX2's VPMADDUBSW adds pairs of them into 16 bits.

Without VNNI, a uint8 activation times an int8 weight, twice, summed in 16 bits, reaches
255 x 127 x 2 = 64,770 and clips at 32,767; with 7-bit weights it stays at or under
255 x 64 x 2 = 32,640. On a Zen 3 host (AVX2, no VNNI), ONNX Runtime's file with 8-bit weights
kept 89% of fp32's predictions as run, 96% with its arithmetic done in float; with 7-bit weights,
96% both ways (BENCHMARKS.md, "INT8 on a CPU without VNNI"). ONNX Runtime calls this
``reduce_range``, NNCF its overflow fix.

``target``: "vnni" (8-bit weights; run on CPUs with AVX-512 VNNI, AVX-VNNI or AMX, or on Arm),
"no-vnni" (7-bit weights; correct on every CPU, a little coarser), or "auto": this CPU's kind, so a
file made where it will run is right there. PyTorch's x86 backend lays its files out its own way
on every CPU: 7-bit activations, which do not clip either.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..hardware import Int8Support, int8_support
from ..errors import ConfigError

INT8_TARGETS = ("auto", "vnni", "no-vnni")
INT8_PAYS_AT = 1.5  # INT8 this many times faster than fp32 on the same runtime, or more: nothing to explain


@dataclass(frozen=True)
class Int8Layout:
    """How an INT8 file's integers are laid out, and for which CPUs."""

    target: str  # "vnni", "no-vnni", or "any" (PyTorch x86's settings, right on every CPU)
    weight_bits: int  # of the int8 weights' 8
    activation_bits: int  # of the uint8 activations' 8
    summary: str  # one line for the user: for whom, what, and why

    @property
    def weight_range(self) -> tuple[int, int]:
        """The int8 weights' range: -128..127 with 8 bits, -64..63 with 7."""
        return -2 ** (self.weight_bits - 1), 2 ** (self.weight_bits - 1) - 1

    def metadata(self) -> dict:
        return {"target": self.target, "weight_bits": self.weight_bits, "activation_bits": self.activation_bits}


def check_int8_target(target: str) -> None:
    if target not in INT8_TARGETS:
        raise ConfigError(f"unknown INT8 target {target!r}; choose one of {', '.join(INT8_TARGETS)}")


def resolve_target(target: str, cpu: Int8Support | None = None) -> str:
    """``target``, or for "auto" the kind of ``cpu`` (default: this one): "vnni" or "no-vnni"."""
    check_int8_target(target)
    if target != "auto":
        return target
    return "no-vnni" if (cpu or int8_support()).saturates else "vnni"


def int8_layout(backend: str, target: str = "auto", cpu: Int8Support | None = None) -> Int8Layout:
    """The layout of ``backend``'s INT8 file for ``target``; ``cpu`` (default: this one) resolves "auto"."""
    cpu = cpu or int8_support()
    resolved = resolve_target(target, cpu)
    here = f"this CPU: {cpu.instruction or ('no VNNI' if cpu.known else 'not recognised')}"
    if backend == "x86":
        return Int8Layout("any", 8, 7, "PyTorch x86 settings: 8-bit weights, 7-bit activations, which "
                                       f"cannot clip on any x86 CPU ({here})")
    if resolved == "no-vnni":
        return Int8Layout(resolved, 7, 8, "for every CPU: 7-bit weights, so that CPUs without VNNI cannot "
                                          f"clip their 16-bit sums ({here})")
    mismatch = "; on this CPU its sums can clip: quantize with --int8-target no-vnni to run it here" \
        if cpu.saturates else ""
    return Int8Layout(resolved, 8, 8, f"for CPUs with VNNI or AMX: all 8 bits of the weights ({here}){mismatch}")


def speed_note(int8_ms: float, fp32_ms: float, int8_mb: float, fp32_mb: float, runtime: str,
               cpu: Int8Support | None = None) -> str | None:
    """One line where INT8 barely pays on a CPU without VNNI; None where it pays or VNNI is there."""
    cpu = cpu or int8_support()
    speedup = fp32_ms / int8_ms
    if not cpu.saturates or speedup >= INT8_PAYS_AT:
        return None
    why = "this CPU has no VNNI" if cpu.known else "this CPU is not recognised, and may have no VNNI"
    return (f"{why}: INT8 runs {speedup:.2f}x fp32 on {runtime} here; it still makes the file "
            f"{fp32_mb / int8_mb:.1f}x smaller")
