"""GPU tier: fp16 and bf16 ZeRO-2 distillation on CUDA. Skips itself where there is no GPU.

Run on a GPU machine with ``pytest -m gpu tests/test_gpu.py`` (``pipeline/bench_gpu.sh`` does).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pipeline_helpers import REPO, base_args, check_ok, launch, step_records

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_zero2_distillation_on_gpu(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, precision: str
) -> None:
    run = tmp_path / precision
    args = base_args(tiny_teacher, small_data_dir, run, **{
        "--ds-config": REPO / "ds_configs" / f"zero2_{precision}.json",
        "--max-steps": 20, "--lr": 2e-3, "--save-every": 20, "--eval-every": 20,
    })  # fmt: skip
    result = launch(args, launcher="python", env={"DS_ACCELERATOR": "cuda"})
    check_ok(result)
    assert f"cuda, {precision})" in result.stdout
    records = step_records(run)
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["memory_gib"] > 0
    if precision == "fp16":
        assert "loss_scale" in records[-1] and "skipped_steps" in records[-1]


def test_fp16_teacher_runs_in_half_precision(tiny_teacher: Path) -> None:
    from pipeline.models import load_teacher

    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    teacher.to(device="cuda", dtype=torch.float16)
    ids = torch.randint(5, 100, (2, 16), device="cuda")
    with torch.inference_mode():
        last, _ = teacher.encode(ids, None)
        logits = teacher.head(last[:, 0])
    assert last.dtype == torch.float16 and logits.dtype == torch.float16
    assert torch.isfinite(logits).all()
