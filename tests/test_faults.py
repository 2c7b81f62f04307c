"""The fault campaign (python -m pipeline.tools.faults) on a few fixed scenarios: real 2-rank
jobs killed where it hurts, requeued, and required to end as the uninterrupted job did. The full
campaign (50 scenarios, every kind) is a benchmark: README, "Reliability"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import REPO, train_env


def _campaign(tmp_path: Path, *args: str) -> list[dict[str, object]]:
    out = tmp_path / "outcomes.json"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.faults", "--workdir", str(tmp_path / "w"),
         "--json", str(out), "--quiet", *args],
        cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert out.is_file(), result.stderr[-3000:]
    rows: list[dict[str, object]] = json.loads(out.read_text())
    assert result.returncode == (0 if all(r["ok"] for r in rows) else 1)
    return rows


@pytest.mark.slow  # ~77 s: a checkpoint without COMMIT.json or with a bad sha256 is skipped:
# test_checkpoint.py, test_integration_resume.py::test_damaged_newest_checkpoint_...
def test_a_rank_killed_between_its_files_and_the_commit_and_a_flipped_checkpoint_byte(
    tmp_path: Path,
) -> None:
    rows = _campaign(tmp_path, "--scenarios", "2", "--kinds", "kill-at", "flip-checkpoint",
                     "--seed", "1")  # fmt: skip
    assert [r["ok"] for r in rows] == [True, True], rows
    assert all(r["lost"] == 0 for r in rows)
    assert "checksum caught it" in str(rows[1]["struck"])


@pytest.mark.slow
def test_every_kind_of_fault_once(tmp_path: Path) -> None:
    rows = _campaign(tmp_path, "--scenarios", "10", "--seed", "100")
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad
