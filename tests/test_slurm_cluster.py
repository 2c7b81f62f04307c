"""Smoke tests for the throw-away Slurm cluster fixture (tests/slurm_cluster.py).

A two-task srun job completes with both ranks in its output; a `--requeue` job that requeues
itself runs again with SLURM_RESTART_COUNT=1 and appends to the same output file; and a cluster
that is left through an exception leaves no daemon, slurmstepd or job process behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, slurm_available

pytestmark = pytest.mark.slurm

TWO_RANKS = """#!/bin/bash
srun bash -c 'echo "rank=$SLURM_PROCID ntasks=$SLURM_NTASKS"'
"""

# First run: ask Slurm to requeue ourselves, then wait to be killed by the requeue.
# Second run (SLURM_RESTART_COUNT=1): report and succeed.
REQUEUE_SELF = """#!/bin/bash
echo "run restart=${SLURM_RESTART_COUNT:-0}"
if [ "${SLURM_RESTART_COUNT:-0}" = "0" ]; then
    scontrol requeue "$SLURM_JOB_ID"
    sleep 120
    exit 3
fi
echo "restart=$SLURM_RESTART_COUNT"
exit 0
"""


def test_two_task_job_runs_both_ranks(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "ranks.out"
    job = slurm_cluster.sbatch(["--ntasks=2", f"--output={out}"], TWO_RANKS, cwd=tmp_path)
    state = slurm_cluster.wait(job, timeout=60)
    text = out.read_text()
    assert state == "COMPLETED", (state, slurm_cluster.job_info(job), text)
    assert "rank=0 ntasks=2" in text
    assert "rank=1 ntasks=2" in text
    info = slurm_cluster.job_info(job)
    assert info["ExitCode"] == "0:0"
    assert info["NumTasks"] == "2"


@pytest.mark.slow  # ~15 s: a real requeue in test_slurm_jobs.py (preemption)
def test_requeued_job_runs_again_and_appends(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "requeue.out"
    job = slurm_cluster.sbatch(
        ["--requeue", "--open-mode=append", f"--output={out}"], REQUEUE_SELF, cwd=tmp_path
    )
    state = slurm_cluster.wait(job, timeout=120)
    text = out.read_text()
    info = slurm_cluster.job_info(job)
    assert state == "COMPLETED", (state, info, text)
    assert int(info["RestartCnt"]) >= 1
    assert info["ExitCode"] == "0:0"
    # One output file holds both runs.
    assert "run restart=0" in text
    assert "run restart=1" in text
    assert "restart=1\n" in text.replace("run restart=1\n", "")


def _procs_with_env(marker: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in env:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


@pytest.mark.skipif(not slurm_available(), reason="Slurm/munge binaries not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="the test Slurm cluster runs its daemons as root")
def test_stop_leaves_no_processes_even_on_error(tmp_path: Path) -> None:
    cluster = SlurmCluster(tmp_path / "c")
    marker = f"SLURM_CONF={cluster.conf_path}"
    with pytest.raises(RuntimeError, match="test failed on purpose"), cluster:
        job = cluster.sbatch(["--output=sleep.out"], "#!/bin/bash\nsleep 300\n")
        cluster.wait_running(job, timeout=30)
        pids = cluster.daemon_pids()
        assert all(pids[name] for name in ("munged", "slurmctld", "slurmd")), pids
        deadline = time.monotonic() + 10
        while not (job_procs := _procs_with_env(marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        raise RuntimeError("test failed on purpose")
    assert not cluster.running
    every = set().union(*cluster.daemon_pids().values(), job_procs)
    assert every, "expected daemon and job pids to have been recorded"
    assert not [p for p in every if _alive(p)], "processes survived stop()"
    assert not _procs_with_env(marker)
    cluster.stop()  # stopping twice is harmless
