"""Whether this CPU runs bf16 natively: read from /proc/cpuinfo's flags (x86) or features (Arm),
and the one-line note a bf16 run gets where it does not."""

from __future__ import annotations

from pathlib import Path

from pipeline.run.cpu import bf16_note, native_bf16

EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "Features\t: fp asimd sve bf16 i8mm\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_native_bf16_is_read_from_the_cpus_flags(tmp_path: Path) -> None:
    assert not native_bf16(write(tmp_path, EPYC_AVX2))
    assert native_bf16(write(tmp_path, SAPPHIRE_RAPIDS))
    assert native_bf16(write(tmp_path, GRAVITON3))
    assert native_bf16(tmp_path / "missing")  # nothing to read: no claim
    assert native_bf16(write(tmp_path, "model name\t: something\n"))  # no flags line: no claim


def test_a_bf16_run_on_an_emulating_cpu_gets_one_line_naming_the_fp32_config(
    tmp_path: Path,
) -> None:
    note = bf16_note(write(tmp_path, EPYC_AVX2))
    assert note is not None and "\n" not in note
    assert "no native bf16" in note and "--ds-config zero2_fp32" in note
    assert bf16_note(write(tmp_path, SAPPHIRE_RAPIDS)) is None
