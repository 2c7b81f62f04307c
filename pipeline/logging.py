"""Rank 0's view of a run: a progress line, TensorBoard scalars and RUN_DIR/metrics.jsonl.

``metrics.jsonl`` holds one JSON object per logged step (step, loss, each term, lr,
consumed_samples, tokens_per_s, ...), and ``{"eval": ...}`` objects for validation passes. On
resume, records past the checkpoint's step are dropped first, so the file reads as one run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_open


def truncate_after(path: Path, step: int) -> None:
    """Drop records with a step beyond ``step`` (work that the resumed run will redo)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if int(record.get("step", 0)) <= step:
            keep.append(line)
    with atomic_open(path, "w") as fh:
        fh.write("".join(f"{line}\n" for line in keep))


def _fmt(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"


class RunLogger:
    """Writes metrics on rank 0; a no-op on other ranks."""

    def __init__(self, run_dir: Path, enabled: bool, max_steps: int, start_step: int) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self.start_step = start_step
        self.start_time = time.perf_counter()
        self._tb: Any = None
        self._jsonl: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        truncate_after(self.metrics_path, start_step)
        self._jsonl = open(self.metrics_path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(run_dir / "tensorboard"),
                purge_step=start_step + 1 if start_step else None,
            )
        except ImportError:  # tensorboard is a dependency, but do not die for a missing logger
            print("warning: tensorboard not installed; no TensorBoard events", file=sys.stderr)

    def log_step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = int(record["step"])
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, step)
        done = step - self.start_step
        elapsed = time.perf_counter() - self.start_time
        eta = elapsed / max(done, 1) * (self.max_steps - step)
        terms = " ".join(
            f"{k}={_fmt(record[k])}" for k in ("loss", "ce", "mlm", "cos", "mse") if k in record
        )
        scale = f" scale={record['loss_scale']:.0f}" if "loss_scale" in record else ""
        print(
            f"step {step}/{self.max_steps} {terms} lr={record['lr']:.3e}{scale} "
            f"{record['tokens_per_s']:,.0f} tok/s eta {eta / 60:.1f} min",
            flush=True,
        )

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"eval/{key}", value, step)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        print(f"eval @ step {step}: {shown}", flush=True)

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
