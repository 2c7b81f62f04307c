"""What this CPU runs fast: whether bf16 matmuls are native here or emulated.

PyTorch runs bf16 matmuls on a CPU natively only with AVX512-BF16 or AMX (x86) or the BF16
extension (Arm); elsewhere (an AVX2-only AMD EPYC, say) they are emulated and measured 43x
slower than fp32 (0.7 vs 29.9 GFLOP/s, 1024 x 1024 matmuls, torch 2.13, 2026-12-06). A bf16 CPU
run there is hours instead of minutes: :func:`bf16_note` says so at the start of the run, and
the demo picks fp32 there.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU advertises native bf16 arithmetic (True where nothing can be read: no
    claim is made about a CPU we cannot see)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return True
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return not flags or any(flag in flags for flag in NATIVE_BF16_FLAGS)


def bf16_note(cpuinfo: Path = CPUINFO) -> str | None:
    """The start-up note of a bf16 run on a CPU without native bf16 (None where it has it)."""
    if native_bf16(cpuinfo):
        return None
    return (
        "this CPU has no native bf16 (no avx512_bf16, amx_bf16 or bf16 flag in /proc/cpuinfo): "
        "its bf16 matmuls are emulated, tens of times slower than fp32; --ds-config zero2_fp32 "
        "(and --model.teacher_dtype fp32) runs the same training in fp32"
    )
