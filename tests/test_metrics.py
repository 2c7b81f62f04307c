"""What a run records: loss windows that keep overflows out of the averages, files that read as
one run after a resume, the per-rank sample audit."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from pipeline.run.metrics import LogWindow, RunLogger, SampleLog, hours_minutes, truncate_after


def test_window_averages_finite_micro_batches_and_counts_the_rest() -> None:
    w = LogWindow(torch.device("cpu"))
    w.add(torch.tensor(2.0), {"loss": torch.tensor(2.0), "mlm": torch.tensor(1.0)}, 10)
    w.add(
        torch.tensor(float("inf")),
        {"loss": torch.tensor(float("inf")), "mlm": torch.tensor(9.0)},
        10,
    )
    w.add(torch.tensor(4.0), {"loss": torch.tensor(4.0), "mlm": torch.tensor(3.0)}, 10)
    record = w.reduce()
    assert record["loss"] == 3.0 and record["mlm"] == 2.0
    assert record["nonfinite_losses"] == 1 and record["tokens_per_s"] > 0
    empty = w.reduce()  # a new window
    assert empty["nonfinite_losses"] == 0 and "loss" not in empty
    w.add(torch.tensor(float("nan")), {"loss": torch.tensor(float("nan"))}, 1)
    assert math.isnan(w.reduce()["loss"])  # nothing finite to average


def test_resume_drops_records_past_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo'
    )
    truncate_after(path, 5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_logger_writes_steps_and_evals_on_rank_0_only(tmp_path: Path) -> None:
    log = RunLogger(tmp_path / "r0", True, 10, 0)
    log.log_step({"step": 1, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 100.0})
    log.log_eval(1, {"mlm_accuracy": 0.5})
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "r0" / "metrics.jsonl").read_text().splitlines()]
    first = lines[0]
    assert {k: first[k] for k in ("step", "loss", "lr", "tokens_per_s")} == {
        "step": 1,
        "loss": 2.5,
        "lr": 1e-3,
        "tokens_per_s": 100.0,
    }
    assert first["eta_s"] >= 0 and abs(first["time"] - time.time()) < 60
    assert lines[1:] == [{"step": 1, "eval": {"mlm_accuracy": 0.5}}]
    assert list((tmp_path / "r0" / "tensorboard").glob("events.out.tfevents.*"))
    quiet = RunLogger(tmp_path / "r1", False, 10, 0)
    quiet.log_step({"step": 1, "loss": 1.0, "lr": 0.0, "tokens_per_s": 1.0})
    quiet.close()
    assert not (tmp_path / "r1").exists()


def test_sample_log_appends_after_the_resumed_step(tmp_path: Path) -> None:
    batch = {"sample_index": torch.tensor([4, 7]), "view": torch.tensor([0, 0])}
    log = SampleLog(tmp_path, 1, 0)
    for step in (1, 2, 3):
        log.write(step, 0, batch)
    log.close()
    again = SampleLog(tmp_path, 1, 2)  # resumed from step 2: step 3 is redone
    again.write(3, 0, batch)
    again.close()
    lines = (tmp_path / "samples" / "rank00001.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert json.loads(lines[0]) == {"step": 1, "micro": 0, "samples": [4, 7], "views": [0, 0]}


def test_the_progress_line_says_enough_for_a_week_long_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = RunLogger(tmp_path, True, 100_000, 0, report_to=[])
    record = {"step": 10, "loss": 2.5, "ce": 1.0, "lr": 1e-4, "tokens_per_s": 12345.0}
    log.log_step({**record, "grad_norm": 0.75, "mfu": 0.412, "memory_gib": 3.25})
    log.close()
    line = capsys.readouterr().out.strip()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step 10/100000 loss=2.5 ce=1 ", line)
    for part in ("gnorm=0.75", "12,345 tok/s", "mfu 41.2%", "mem 3.2 GiB", "eta "):
        assert part in line, (part, line)
    assert not (tmp_path / "tensorboard").exists()  # report_to [] : no tracker
    assert [hours_minutes(s) for s in (0, 59 * 60, 3 * 3600 + 7 * 60 + 20, 1e9)] == [
        "0m",
        "59m",
        "3h07m",
        "277777h47m",
    ]
