"""GPU tier: what only a CUDA device shows. Skips itself where there is no GPU.

fp16 and bf16 ZeRO-2 on CUDA with a save every few steps (our collectives on an NCCL group), an
exact resume, a preemption signal mid-run and its resume, the fp16 teacher, a world-size change
(2 CPU ranks -> 1 GPU rank, through the universal checkpoint, into fused AdamW on CUDA), and the
teacher cache built on CUDA; ModernBERT and DeBERTa teachers in fp16 beside a bf16 student. Run on a GPU machine with ``pytest -m gpu tests/test_gpu.py``
(``pipeline/tools/bench_gpu.sh`` does).

Across processes a GPU gives the same bits only with deterministic kernels: every run here sets
``--train.deterministic true`` (``torch.use_deterministic_algorithms`` with warnings for ops that
have no deterministic kernel, and ``CUBLAS_WORKSPACE_CONFIG``), and the resume comparisons allow
a stated tolerance (:data:`RESUME_RTOL`) rather than assert bits that such an op could change.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pipeline_helpers import REPO, base_args, check_ok, launch, losses, step_records, train_env

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = {"DS_ACCELERATOR": "cuda", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
RESUME_RTOL = 1e-3  # fp16/bf16 losses of a resumed run against the uninterrupted one


def _same_losses(a: Path, b: Path) -> None:
    got, want = dict(losses(a)), dict(losses(b))
    assert got.keys() == want.keys()
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=RESUME_RTOL), step


def _gpu_args(teacher: Path, data: Path, run: Path, precision: str, **extra: object) -> list[str]:
    return base_args(teacher, data, run, **{
        "--ds-config": REPO / "ds_configs" / f"zero2_{precision}.json",
        "--max-steps": 12, "--lr": 2e-3, "--save-every": 4, "--eval-every": 6,
        "--train.deterministic": "true", **extra,
    })  # fmt: skip


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_zero2_distillation_on_gpu_saves_and_resumes_exactly(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, precision: str
) -> None:
    full = tmp_path / f"{precision}_full"
    result = launch(
        _gpu_args(tiny_teacher, small_data_dir, full, precision), launcher="python", env=CUDA
    )
    check_ok(result)
    assert f"cuda, {precision})" in result.stdout
    records = step_records(full)
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["memory_gib"] > 0
    if precision == "fp16":
        assert "loss_scale" in records[-1] and "skipped_steps" in records[-1]
    assert (full / "checkpoints" / "latest").read_text() == "global_step12"
    # Stop after 5 steps (checkpoint at 4 and 5), resume to 12: the same losses.
    parts = tmp_path / f"{precision}_parts"
    args = _gpu_args(tiny_teacher, small_data_dir, parts, precision)
    check_ok(launch([*args, "--train.stop_after_steps", "5"], launcher="python", env=CUDA))
    check_ok(launch(args, launcher="python", env=CUDA))
    _same_losses(parts, full)


def test_preemption_on_gpu_checkpoints_exits_42_and_resumes(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    run = tmp_path / "preempted"
    args = _gpu_args(tiny_teacher, small_data_dir, run, "bf16", **{"--max-steps": 40})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *args], cwd=REPO, env=train_env(CUDA),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and len(step_records(run)) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 42, (out[-2000:], err[-3000:])
    stopped = int((run / "checkpoints" / "latest").read_text().removeprefix("global_step"))
    assert 2 <= stopped < 40
    check_ok(launch(args, launcher="python", env=CUDA))
    assert [s for s, _ in losses(run)] == list(range(1, 41))


def test_world_size_change_into_fused_adamw_on_cuda(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """A 2-rank checkpoint resumed by 1 GPU rank: DeepSpeed's universal checkpoint, then fused
    AdamW on CUDA, whose step tensors must sit on the GPU (pipeline.checkpoint.manager)."""
    run = tmp_path / "to_gpu"
    shutil.copytree(reference_run, run)
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 12, "--save-every": 4})
    result = launch(args, launcher="python", env=CUDA)
    check_ok(result)
    assert "universal" in result.stdout
    records = step_records(run)
    assert [r["step"] for r in records][-4:] == [9, 10, 11, 12]
    assert all(math.isfinite(r["loss"]) for r in records)


def test_fp16_teacher_runs_in_half_precision(tiny_teacher: Path) -> None:
    from pipeline.model.masked_lm import load_teacher

    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    teacher.to(device="cuda", dtype=torch.float16)
    ids = torch.randint(5, 100, (2, 16), device="cuda")
    with torch.inference_mode():
        last, _ = teacher.encode(ids, None)
        logits = teacher.head(last[:, 0])
    assert last.dtype == torch.float16 and logits.dtype == torch.float16
    assert torch.isfinite(logits).all()


def test_teacher_cache_on_cuda_then_training_from_it(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    cache = tmp_path / "cache"
    built = subprocess.run(
        [sys.executable, "-m", "pipeline.cache_teacher", "--data", str(small_data_dir),
         "--teacher", str(tiny_teacher), "--output", str(cache), "--top-k", "16", "--quiet"],
        cwd=REPO, env=train_env(CUDA), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert (cache / "manifest.json").is_file()
    run = tmp_path / "from_cache"
    args = _gpu_args(tiny_teacher, small_data_dir, run, "bf16", **{
        "--teacher-cache": cache, "--loss.alpha_cos": 0, "--max-steps": 6,
    })  # fmt: skip
    result = launch(args, launcher="python", env=CUDA)
    check_ok(result)
    assert "no teacher forward" in result.stdout
    assert all(math.isfinite(r["loss"]) for r in step_records(run))


def test_fp16_overflows_at_the_floor_stop_with_our_line_and_the_schedule_holds(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """An lr that blows fp16 up: steps overflow at the minimum loss scale. DeepSpeed's scaler
    would raise a bare Exception (exit 1); our guard stops with exit 3 and the last good
    checkpoint. The lr logged at each step is the schedule's, skipped steps or not."""
    run = tmp_path / "overflow"
    args = _gpu_args(tiny_teacher, small_data_dir, run, "fp16", **{
        "--lr": 1e4, "--max-steps": 60, "--train.max_min_scale_steps": 3,
    })  # fmt: skip
    result = launch(args, launcher="python", env=CUDA)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "overflowed at the minimum fp16 loss scale" in result.stdout
    assert "The last good checkpoint is" in result.stdout
    from pipeline.run.optim import lr_lambda

    fn = lr_lambda(60, 0.05)
    for r in step_records(run):
        assert r["lr"] == pytest.approx(1e4 * fn(r["step"] - 1)), r


@pytest.mark.parametrize("kind", ["modernbert", "deberta-v2"])
def test_a_family_distils_on_gpu_with_an_fp16_teacher_and_resumes(
    tmp_path: Path, wordpiece_tokenizer: Path, small_data_dir: Path, kind: str
) -> None:
    """ModernBERT (rotary, local layers, fused Wqkv) and DeBERTa (its own attention kernel):
    the fp16 teacher, a bf16 ZeRO-2 student with the DistilBERT losses and MiniLMv2 relations,
    then stopped after 5 steps and resumed to 12: the same losses."""
    from family_models import make_family_teacher

    teacher = make_family_teacher(tmp_path / kind, wordpiece_tokenizer, kind)
    extra = {"--loss.alpha_relation": 1.0, "--loss.alpha_mse": 1.0}
    full = tmp_path / "full"
    result = launch(
        _gpu_args(teacher, small_data_dir, full, "bf16", **extra), launcher="python", env=CUDA
    )
    check_ok(result)
    records = step_records(full)
    assert all(math.isfinite(r["loss"]) for r in records) and "rel" in records[-1]
    parts = tmp_path / "parts"
    args = _gpu_args(teacher, small_data_dir, parts, "bf16", **extra)
    check_ok(launch([*args, "--train.stop_after_steps", "5"], launcher="python", env=CUDA))
    check_ok(launch(args, launcher="python", env=CUDA))
    _same_losses(parts, full)
