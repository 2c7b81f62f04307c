"""What a run records: loss sums between logs, rank 0's log, and the per-rank sample audit.

* :class:`LogWindow` sums the loss terms of each rank's micro-batches on the device (no sync per
  step) and reduces them over the ranks when a log is due.
* :class:`RunLogger` (rank 0): a progress line (time, step, loss terms, lr, grad norm, tokens/s,
  MFU, memory, ETA as hours and minutes), the trackers of ``train.report_to``
  (:mod:`pipeline.run.trackers`) and ``RUN_DIR/metrics.jsonl``: one JSON object per logged step
  with the same fields (step, time, loss, each term, lr, grad_norm, consumed_samples,
  tokens_per_s, mfu, memory_gib, eta_s, ...), and ``{"eval": ...}`` objects for validation
  passes.
* :class:`SampleLog` (every rank, ``train.sample_log``): the sample indices and mask views of each
  micro-batch in ``RUN_DIR/samples/rankR.jsonl``.
On resume, records past the checkpoint's step are dropped first, so each file reads as one run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any

import torch

from data_prep.atomic import atomic_open
from pipeline.distributed.comm import reduce_on_device
from pipeline.run.trackers import Tracker, open_trackers

PROGRESS_TERMS = ("loss", "ce", "mlm", "cos", "mse", "hid", "att", "rel")
"""The loss terms of the progress line (metrics.jsonl and TensorBoard get every term)."""


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


def hours_minutes(seconds: float) -> str:
    """``3h07m``, ``12m``: an ETA a week-long job can be read by."""
    if not math.isfinite(seconds):
        return "?"
    minutes = max(0, round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def scalars(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a record as tracker scalars (``train/loss``; a blend's
    ``consumed_per_source`` as ``train/consumed_per_source/NAME``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("step", "time"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict):
            for sub, v in value.items():
                out[f"{prefix}/{key}/{sub}"] = float(v)
    return out


class RunLogger:
    """Writes metrics on rank 0 (progress line, metrics.jsonl, trackers); a no-op elsewhere."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        max_steps: int,
        start_step: int,
        report_to: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self.start_step = start_step
        self.start_time = time.perf_counter()
        self._jsonl: Any = None
        self.trackers: list[Tracker] = []
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        truncate_after(self.metrics_path, start_step)
        self._jsonl = open(self.metrics_path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        names = ["tensorboard"] if report_to is None else report_to
        self.trackers = open_trackers(names, run_dir, config or {}, start_step)

    def log_step(self, record: dict[str, Any]) -> None:
        """``record``: the step's figures; the ETA and the time are added here."""
        if not self.enabled:
            return
        step = int(record["step"])
        done = step - self.start_step
        elapsed = time.perf_counter() - self.start_time
        record["eta_s"] = round(elapsed / max(done, 1) * (self.max_steps - step), 1)
        now = time.time()
        record["time"] = round(now, 3)
        self._jsonl.write(json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.log(scalars(record, "train"), step)
        terms = " ".join(f"{k}={_fmt(record[k])}" for k in PROGRESS_TERMS if k in record)
        extra = ""
        if "loss_scale" in record:
            extra += f" scale={record['loss_scale']:.0f}"
        if "grad_norm" in record:
            extra += f" gnorm={_fmt(record['grad_norm'])}"
        speed = f"{record['tokens_per_s']:,.0f} tok/s"
        if "mfu" in record:
            speed += f" mfu {record['mfu']:.1%}"
        memory = f" mem {record['memory_gib']:.1f} GiB" if "memory_gib" in record else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        print(
            f"{stamp} step {step}/{self.max_steps} {terms} lr={record['lr']:.3e}{extra} "
            f"{speed}{memory} eta {hours_minutes(record['eta_s'])}",
            flush=True,
        )

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        for tracker in self.trackers:
            tracker.log(scalars(metrics, "eval"), step)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} eval @ step {step}: {shown}", flush=True)

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        for tracker in self.trackers:
            tracker.close()


class LogWindow:
    """This rank's loss terms since the last log, summed on the device.

    fp16 overflows are skipped steps, not data: a non-finite loss is counted, and its terms are
    kept out of the averages.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.tokens = 0
        self.nonfinite = torch.zeros((), device=self.device, dtype=torch.float64)
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], tokens: int) -> None:
        self.micro_batches += 1
        self.tokens += tokens
        finite = torch.isfinite(loss)
        self.nonfinite += (~finite).double()
        zero = torch.zeros((), device=self.device, dtype=torch.float64)
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, zero) + torch.where(finite, v.double(), zero)

    def reduce(self) -> dict[str, Any]:
        """Averages over every rank's micro-batches since the last log (a collective on the
        default group: the sums live on the device), then a new window."""
        keys = sorted(self.sums)
        counts = [float(self.micro_batches), float(self.tokens)]
        extra = torch.tensor(counts, device=self.device, dtype=torch.float64)
        vec = torch.cat([torch.stack([*(self.sums[k] for k in keys), self.nonfinite]), extra])
        vec = reduce_on_device(vec).cpu()
        skipped, micro_batches, tokens = (vec[i].item() for i in (-3, -2, -1))
        counted = micro_batches - skipped
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record: dict[str, Any] = {
            k: vec[i].item() / counted if counted else float("nan") for i, k in enumerate(keys)
        }
        record["nonfinite_losses"] = int(skipped)
        record["tokens_per_s"] = tokens / elapsed
        self.reset()
        return record


class SampleLog:
    """Appends the samples and mask views of each micro-batch of this rank (a data audit)."""

    def __init__(self, run_dir: Path, rank: int, step: int) -> None:
        path = run_dir / "samples" / f"rank{rank:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        truncate_after(path, step)
        self._fh: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def write(self, step: int, micro: int, batch: dict[str, torch.Tensor]) -> None:
        record = {
            "step": step,
            "micro": micro,
            "samples": batch["sample_index"].tolist(),
            "views": batch["view"].tolist(),
        }
        self._fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._fh.close()
