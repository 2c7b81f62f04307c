"""Launcher detection: ranks and the rendezvous from torchrun, srun, mpirun or nothing; one Slurm
port formula, shared with slurm/env.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.distributed.launch import detect, slurm_port

REPO = Path(__file__).resolve().parent.parent
LAUNCH_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID",
    "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_JOB_ID",
    "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_plain_python_is_one_rank(clean_env: pytest.MonkeyPatch) -> None:
    env = detect()
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (0, 1, 0, "single")
    assert env.master_addr == "127.0.0.1" and env.master_port > 0


def test_torchrun_variables(clean_env: pytest.MonkeyPatch) -> None:
    for k, v in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="10.0.0.1",
                     MASTER_PORT="29500").items():  # fmt: skip
        clean_env.setenv(k, v)
    env = detect()
    assert (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    assert (env.master_addr, env.master_port, env.launcher) == (
        "10.0.0.1",
        29500,
        "torchrun/deepspeed",
    )


def test_srun_variables_and_the_job_port(clean_env: pytest.MonkeyPatch) -> None:
    for k, v in dict(SLURM_PROCID="5", SLURM_STEP_ID="0", SLURM_NTASKS="8", SLURM_LOCALID="1",
                     SLURM_JOB_ID="123456", MASTER_ADDR="node01").items():  # fmt: skip
        clean_env.setenv(k, v)
    env = detect()
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (5, 8, 1, "srun")
    assert (env.master_addr, env.master_port) == ("node01", slurm_port(123456))


def test_mpirun_variables(clean_env: pytest.MonkeyPatch) -> None:
    for k, v in dict(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="2",
                     OMPI_COMM_WORLD_LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="1234").items():  # fmt: skip
        clean_env.setenv(k, v)
    env = detect()
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (1, 2, 1, "mpirun")


def test_slurm_port_is_stable_and_one_formula_for_python_and_env_sh() -> None:
    assert slurm_port(42) == slurm_port(42) and slurm_port(42) != slurm_port(43)
    printed = subprocess.run(
        [sys.executable, "-m", "pipeline.distributed.slurm_port", "987654"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert printed == str(slurm_port(987654))
    script = (
        f"source {REPO}/slurm/env.sh && SLURM_JOB_ID=987654 DISTIL_MASTER_ADDR=h "
        "distil_rendezvous && echo $MASTER_PORT"
    )
    env = {**os.environ, "DISTIL_VENV": str(Path(sys.executable).parent.parent)}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == printed


def test_env_sh_says_which_bash_it_needs_in_one_line() -> None:
    """slurm/env.sh uses `local -n` (bash 4.3) and empty arrays under `set -u` (4.4); under an
    older bash or a plain sh it says so instead of failing somewhere inside."""
    sh = shutil.which("dash") or shutil.which("sh")
    assert sh is not None
    result = subprocess.run(
        [sh, "-c", ". slurm/env.sh"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "slurm/env.sh: needs bash 4.4 or newer (this is not bash); run the scripts with a newer bash"
    ]
    ok = subprocess.run(
        ["bash", "-c", "set -u; . slurm/env.sh && echo sourced"], cwd=REPO, capture_output=True,
        text=True, timeout=60, env={**os.environ, "DISTIL_VENV": ""},
    )  # fmt: skip
    assert ok.stdout.strip().endswith("sourced"), ok.stderr
