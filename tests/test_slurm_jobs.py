"""The Slurm job scripts (slurm/*.sbatch, slurm/submit_prep.sh) on a live single-node cluster.

Each test submits the real scripts, unchanged, to the `slurm_cluster` fixture (munged + slurmctld
+ slurmd on loopback, 2 CPUs), overriding only the GPU request on the sbatch command line
(`--gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1`) and pointing the env.sh settings at
temporary folders through the job environment:

- submit_prep.sh: an array of 2 build_shards tasks + the dependent finalize job give a DATA_DIR
  byte-identical to a local build_shards run;
- pretrain.sbatch: 2 srun tasks (gloo) train the tiny student to completion (TensorBoard events,
  a complete checkpoint); bad input fails the job without a requeue;
- preemption: `scancel --signal=USR1` -> checkpoint -> exit 42 -> `scontrol requeue` -> the job
  finishes in its second run with the same per-step losses as the uninterrupted run (fp32), and
  one log file holds both runs;
- cache_teacher.sbatch: a signal to the batch shell requeues it; the finished cache equals one
  made by a single local process (marked slow);
- a chain prep -> cache -> pretrain (--teacher-cache), all submitted up front from the repo root
  with --dependency=afterok, as a user would.

About 2.5 min in all on 2 cores (each job pays ~8 s of Python start-up; a requeue ~12 s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import (
    REPO,
    VENV_BIN,
    eval_records,
    make_bert_teacher,
    step_records,
    train_env,
)
from slurm_cluster import TERMINAL_STATES, SlurmCluster

pytestmark = pytest.mark.slurm

SLURM_DIR = REPO / "slurm"
FP32 = REPO / "ds_configs" / "zero2_fp32.json"
# The GPU header of the scripts, overridden for this 2-CPU node: 2 ranks, no GPUs.
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]
# Long enough that a job is still training when the test signals it (~25 steps/s here).
PREEMPT_STEPS = 300
JOB_TIMEOUT = 300.0


def train_args(steps: int) -> list[str]:
    """pipeline.train options appended after the script name (the small fp32 run of the tests)."""
    return [
        "--max-steps", str(steps), "--global-batch-size", "8", "--log-every", "1",
        "--eval-every", "0", "--save-every", "0", "--train.eval_samples", "16",
        "--data.num_workers", "1",
    ]  # fmt: skip


def job_env(tmp: Path, **settings: str | Path) -> dict[str, str]:
    """The job environment: every env.sh setting pinned (nothing leaks in from the shell running
    pytest), defaults under `tmp`, the venv of this interpreter, CPU-only DeepSpeed."""
    venv = VENV_BIN.parent if (VENV_BIN.parent / "pyvenv.cfg").is_file() else None
    env: dict[str, str | Path] = {
        "DISTIL_HOME": REPO,
        "DISTIL_ENV": "",
        "DISTIL_VENV": venv or "",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHON": "python" if venv else sys.executable,
        "DISTIL_WORK": tmp / "work",
        "CORPUS": "",
        "TOKENIZER": "",
        "SEQ_LEN": "64",
        "DATA_DIR": tmp / "work" / "data",
        "PREP_SHARDS": "2",
        "PREP_ARGS": "",
        "TEACHER": "",
        "CACHE_DIR": tmp / "work" / "cache",
        "CACHE_TOP_K": "8",
        "CACHE_VIEWS": "",
        "CACHE_ARGS": "",
        "TEACHER_CACHE": "",
        "RUN_DIR": tmp / "work" / "run",
        "RECIPE": "",
        "DS_CONFIG": FP32,
        "TRAIN_ARGS": "",
        "DISTIL_MASTER_ADDR": "",
        "DISTIL_MASTER_PORT": "",
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(settings)
    return {k: str(v) for k, v in env.items()}


def submit(
    cluster: SlurmCluster,
    script: str,
    sbatch_opts: list[str],
    env: dict[str, str],
    script_args: list[str] | None = None,
    cwd: Path | None = None,
) -> int:
    """`sbatch OPTS slurm/SCRIPT ARGS` with `env` added to the cluster's environment."""
    args = [*sbatch_opts, str(SLURM_DIR / script), *(script_args or [])]
    return cluster.sbatch(args, None, cwd=cwd, extra_env=env)


def submit_prep(
    cluster: SlurmCluster, env: dict[str, str], sbatch_opts: list[str], cwd: Path
) -> tuple[int, int]:
    """Run slurm/submit_prep.sh as a user would; returns (array job id, finalize job id)."""
    out = subprocess.run(
        [str(SLURM_DIR / "submit_prep.sh"), *sbatch_opts],
        env={**cluster.env, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"submit_prep.sh failed:\n{out.stdout}\n{out.stderr}"
    match = re.search(r"array job (\d+)", out.stderr)
    assert match, out.stderr
    return int(match.group(1)), int(out.stdout.strip().splitlines()[-1])


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else f"<no {path}>"


def explain(cluster: SlurmCluster, job: int, log: Path) -> str:
    """Job record and log, for assertion messages."""
    return f"job {job}: {cluster.job_info(job)}\n--- {log}\n{read(log)[-6000:]}"


def wait_until(
    cluster: SlurmCluster, job: int, log: Path, what: str, ready: Callable[[], bool]
) -> None:
    """Poll `ready()` while the job runs; fail if the job ends first or after JOB_TIMEOUT."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while not ready():
        if cluster.job_state(job) in TERMINAL_STATES:
            pytest.fail(f"job ended before {what}\n{explain(cluster, job, log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {JOB_TIMEOUT:.0f}s\n{explain(cluster, job, log)}")
        time.sleep(0.2)


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return read(path).count('"loss"') if path.is_file() else 0


WALL_CLOCK = ("tokens_per_s", "time", "eta_s", "memory_gib", "mfu")
"""Fields of a metrics record that measure the machine, not the training."""


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics records without the wall-clock and machine measurements."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@dataclass
class Finished:
    job: int
    state: str
    info: dict[str, str]
    run_dir: Path
    log: Path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: Path) -> Path:
    """A tiny BertForMaskedLM over the small WordPiece vocabulary (pipeline_helpers)."""
    return make_bert_teacher(tmp_path_factory.mktemp("slurm_teacher") / "tiny", wordpiece_tokenizer)


@pytest.fixture(scope="module")
def uninterrupted(
    slurm_cluster: SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
    teacher: Path,
    small_data_dir: Path,
) -> Finished:
    """pretrain.sbatch with 2 tasks, PREEMPT_STEPS steps, never signalled: the reference run."""
    tmp = tmp_path_factory.mktemp("pretrain_ref")
    run_dir = tmp / "run"
    env = job_env(tmp, DATA_DIR=small_data_dir, TEACHER=teacher, RUN_DIR=run_dir)
    opts = [*CPU_JOB, f"--output={tmp}/pretrain-%j.out"]
    job = submit(slurm_cluster, "pretrain.sbatch", opts, env, train_args(PREEMPT_STEPS), cwd=tmp)
    state = slurm_cluster.wait(job, timeout=JOB_TIMEOUT)
    info = slurm_cluster.job_info(job)
    return Finished(job, state, info, run_dir, tmp / f"pretrain-{job}.out")


def test_scripts_pass_bash_n_and_shellcheck() -> None:
    scripts = sorted([*SLURM_DIR.glob("*.sbatch"), *SLURM_DIR.glob("*.sh")])
    assert {p.name for p in scripts} >= {
        "env.sh", "prep.sbatch", "submit_prep.sh", "pretrain.sbatch", "cache_teacher.sbatch",
    }  # fmt: skip
    for path in scripts:
        out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, f"{path}: {out.stderr}"
        assert "set -euo pipefail" in path.read_text() or path.name == "env.sh", path
    if shutil.which("shellcheck"):
        out = subprocess.run(
            ["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, cwd=REPO
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_prep_array_and_finalize_match_a_local_run(
    slurm_cluster: SlurmCluster,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    prep: Any,
    tmp_path: Path,
) -> None:
    assert len(small_corpus) >= 2  # every input file is a unit: 2 tasks both get work
    settings = ["--seq-len", "64", "--valid-fraction", "0.05", "--seed", "7"]
    settings += ["--unit-max-files", "1"]
    local = tmp_path / "local"
    prep.build(
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, *settings,
        "--output", local, "--workers", "1",
    )  # fmt: skip
    data = tmp_path / "slurm"
    env = job_env(
        tmp_path,
        CORPUS=" ".join(map(str, small_corpus)),
        TOKENIZER=wordpiece_tokenizer,
        SEQ_LEN="64",
        PREP_ARGS="--valid-fraction 0.05 --seed 7 --unit-max-files 1",
        DATA_DIR=data,
        PREP_SHARDS="2",
    )
    opts = ["--cpus-per-task=1", f"--output={tmp_path}/%x-%j.out"]
    _, final = submit_prep(slurm_cluster, env, opts, tmp_path)
    state = slurm_cluster.wait(final, timeout=JOB_TIMEOUT)
    logs = {p.name: read(p) for p in sorted(tmp_path.glob("distil-prep*.out"))}
    assert state == "COMPLETED", (slurm_cluster.job_info(final), logs)
    assert slurm_cluster.job_info(final)["ExitCode"] == "0:0"
    # Both array tasks ran, each its own share of the units, then the finalize job.
    task_logs = [t for name, t in logs.items() if "finalize" not in name]
    assert len(task_logs) == 2, logs
    units = len(small_corpus)
    for index in (0, 1):
        (text,) = [t for t in task_logs if f"task {index} of 2" in t]
        assert f"{len(range(index, units, 2))} unit(s) done" in text, text
    (final_log,) = [t for name, t in logs.items() if "finalize" in name]
    assert "wrote " in final_log and "manifest.json" in final_log
    # Byte for byte what one local run writes: shards, unit records, plan and manifest.
    got, want = tree(data), tree(local)
    assert "manifest.json" in want and any(k.endswith(".bin") for k in want)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []


def test_pretrain_two_tasks_completes(uninterrupted: Finished) -> None:
    r = uninterrupted
    assert r.state == "COMPLETED", explain_finished(r)
    assert r.info["ExitCode"] == "0:0"
    assert r.info["NumTasks"] == "2"
    assert r.info["RestartCnt"] == "0"
    log = read(r.log)
    assert "2 rank(s) (srun, cpu, fp32)" in log, log
    assert "training finished" in log
    # Every step logged once; TensorBoard events; the final checkpoint is complete, 2 ZeRO shards.
    assert [rec["step"] for rec in step_records(r.run_dir)] == list(range(1, PREEMPT_STEPS + 1))
    events = list((r.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    ckpt = r.run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"global_step{PREEMPT_STEPS}"
    final = ckpt / f"global_step{PREEMPT_STEPS}"
    assert (final / "COMMIT.json").is_file()
    assert len(list(final.glob("zero_pp_rank_*_optim_states.pt"))) == 2


def explain_finished(r: Finished) -> str:
    return f"job {r.job}: {r.state} {r.info}\n--- {r.log}\n{read(r.log)[-6000:]}"


def test_preempted_job_requeues_and_matches_the_uninterrupted_run(
    slurm_cluster: SlurmCluster,
    uninterrupted: Finished,
    teacher: Path,
    small_data_dir: Path,
    tmp_path: Path,
) -> None:
    assert uninterrupted.state == "COMPLETED", explain_finished(uninterrupted)
    run_dir = tmp_path / "run"
    env = job_env(tmp_path, DATA_DIR=small_data_dir, TEACHER=teacher, RUN_DIR=run_dir)
    opts = [*CPU_JOB, f"--output={tmp_path}/pretrain-%j.out"]
    job = submit(slurm_cluster, "pretrain.sbatch", opts, env, train_args(PREEMPT_STEPS), tmp_path)
    log = tmp_path / f"pretrain-{job}.out"
    wait_until(slurm_cluster, job, log, "3 logged steps", lambda: steps_logged(run_dir) >= 3)
    # What --signal=USR1@120 does near the time limit: USR1 to the ranks (srun steps) only.
    slurm_cluster.scancel(job, signal="USR1")
    state = slurm_cluster.wait(job, timeout=JOB_TIMEOUT)
    info = slurm_cluster.job_info(job)
    text = read(log)
    assert state == "COMPLETED", explain(slurm_cluster, job, log)
    assert int(info["RestartCnt"]) >= 1, explain(slurm_cluster, job, log)
    assert info["ExitCode"] == "0:0"
    # One log, both runs: the preempted one (checkpoint, exit 42, requeue) and the resumed one.
    assert [p.name for p in tmp_path.glob("pretrain-*.out")] == [log.name]
    assert f"job {job}, restart 0:" in text and f"job {job}, restart 1:" in text, text
    match = re.search(r"preempted \(SIGUSR1\): checkpoint at step (\d+); exiting with 42", text)
    assert match, text
    stopped = int(match.group(1))
    assert 3 <= stopped < PREEMPT_STEPS
    assert "requeueing job" in text
    assert (
        f"resumed from {run_dir / 'checkpoints' / f'global_step{stopped}'} at step {stopped}"
        in text
    )
    assert "training finished" in text
    # Same losses (and every other metric) to the last bit as the run that was never stopped.
    got, want = step_records(run_dir), step_records(uninterrupted.run_dir)
    assert [r["step"] for r in got] == list(range(1, PREEMPT_STEPS + 1))
    assert [(r["step"], r["loss"]) for r in got] == [(r["step"], r["loss"]) for r in want]
    assert comparable(got) == comparable(want)
    assert eval_records(run_dir) == eval_records(uninterrupted.run_dir)


def test_pretrain_bad_input_fails_the_job_without_requeue(
    slurm_cluster: SlurmCluster, teacher: Path, tmp_path: Path
) -> None:
    env = job_env(tmp_path, DATA_DIR=tmp_path / "missing", TEACHER=teacher)
    opts = [*CPU_JOB, f"--output={tmp_path}/pretrain-%j.out"]
    job = submit(slurm_cluster, "pretrain.sbatch", opts, env, train_args(6), tmp_path)
    log = tmp_path / f"pretrain-{job}.out"
    state = slurm_cluster.wait(job, timeout=JOB_TIMEOUT)
    info = slurm_cluster.job_info(job)
    assert state == "FAILED", explain(slurm_cluster, job, log)
    assert info["ExitCode"] == "2:0"
    assert info["RestartCnt"] == "0"
    text = read(log)
    assert "pipeline.train: error:" in text and str(tmp_path / "missing") in text, text
    assert "failed with exit code 2" in text
    assert "requeue" not in text


@pytest.mark.slow  # ~35 s; the chain test covers cache_teacher.sbatch in the default set
def test_cache_teacher_requeues_on_its_signal_and_completes(
    slurm_cluster: SlurmCluster,
    teacher: Path,
    small_data_dir: Path,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    env = job_env(tmp_path, DATA_DIR=small_data_dir, TEACHER=teacher, CACHE_DIR=cache)
    opts = [*CPU_JOB, f"--output={tmp_path}/cache-%j.out"]
    job = submit(slurm_cluster, "cache_teacher.sbatch", opts, env, cwd=tmp_path)
    log = tmp_path / f"cache-{job}.out"
    # "+ srun" is printed once the trap is set and just before srun starts (seconds of work).
    wait_until(slurm_cluster, job, log, "the srun line", lambda: "+ srun" in read(log))
    # What --signal=B:USR1@300 does near the time limit: USR1 to the batch shell only.
    slurm_cluster.run(["scancel", "--batch", "--signal=USR1", str(job)])
    state = slurm_cluster.wait(job, timeout=JOB_TIMEOUT)
    info = slurm_cluster.job_info(job)
    text = read(log)
    assert state == "COMPLETED", explain(slurm_cluster, job, log)
    assert int(info["RestartCnt"]) >= 1, explain(slurm_cluster, job, log)
    assert "time limit near (SIGUSR1): requeueing" in text, text
    assert f"job {job}, restart 1:" in text and "teacher cache finished" in text, text
    # The same cache as one local process writes in one go.
    local = tmp_path / "local"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cache_teacher", "--data", str(small_data_dir),
         "--teacher", str(teacher), "--output", str(local), "--top-k", "8", "--quiet"],
        cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got, want = tree(cache), tree(local)
    assert "manifest.json" in want
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []


def test_dependency_chain_prep_cache_pretrain_as_a_user_would(
    slurm_cluster: SlurmCluster,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    teacher: Path,
    tmp_path: Path,
) -> None:
    data, cache, run_dir = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    # From the repo root and without DISTIL_HOME: the scripts find the repo from the submit dir.
    env = job_env(
        tmp_path,
        DISTIL_HOME="",
        CORPUS=" ".join(map(str, small_corpus)),
        TOKENIZER=wordpiece_tokenizer,
        PREP_ARGS="--valid-fraction 0.05 --unit-max-files 1",
        DATA_DIR=data,
        TEACHER=teacher,
        CACHE_DIR=cache,
        TEACHER_CACHE=cache,
        RUN_DIR=run_dir,
    )
    out = f"--output={tmp_path}/%x-%j.out"
    _, prep_job = submit_prep(slurm_cluster, env, ["--cpus-per-task=1", out], REPO)
    after = ["--kill-on-invalid-dep=yes", out]
    cache_job = submit(
        slurm_cluster, "cache_teacher.sbatch",
        [*CPU_JOB, f"--dependency=afterok:{prep_job}", *after], env, cwd=REPO,
    )  # fmt: skip
    train_job = submit(
        slurm_cluster, "pretrain.sbatch",
        [*CPU_JOB, f"--dependency=afterok:{cache_job}", *after], env, train_args(6), cwd=REPO,
    )  # fmt: skip
    state = slurm_cluster.wait(train_job, timeout=2 * JOB_TIMEOUT)
    logs = "\n".join(f"--- {p.name}\n{read(p)}" for p in sorted(tmp_path.glob("*.out")))
    jobs = {"prep": prep_job, "cache": cache_job, "train": train_job}
    infos = {name: slurm_cluster.job_info(j) for name, j in jobs.items()}
    assert state == "COMPLETED", (infos, logs)
    assert all(i["JobState"] == "COMPLETED" for i in infos.values()), (infos, logs)
    # Each stage started only after the one it depends on ended.
    assert infos["cache"]["StartTime"] >= infos["prep"]["EndTime"]
    assert infos["train"]["StartTime"] >= infos["cache"]["EndTime"]
    assert (data / "manifest.json").is_file() and (cache / "manifest.json").is_file()
    assert f"note: teacher cache {cache}" in logs, logs
    assert [r["step"] for r in step_records(run_dir)] == list(range(1, 7))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "global_step6"
