"""Checkpoints end to end (2-rank runs): bitwise resume, preemption by signal, a new world size,
damaged checkpoints, contradicting configs, retention and DeepSpeed's own tools. The
``reference_run`` fixture (conftest.py) is the uninterrupted run they compare with."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_helpers import (
    REPO,
    base_args,
    check_ok,
    eval_records,
    launch,
    losses,
    sample_log,
    step_records,
    train_env,
)

BF16 = str(REPO / "ds_configs" / "zero2_bf16.json")


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(run / "checkpoints"), tag=f"global_step{step}"
    )


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# bf16 is slow: fp32 tests the same resume path; bf16 training is in test_integration_training.
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_resume_is_bitwise_identical(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path, precision: str
) -> None:
    extra = {"--max-steps": 8, "--save-every": 4, "--train.sample_log": "true"}
    if precision == "bf16":
        extra["--ds-config"] = BF16
        reference = tmp_path / "reference"
        check_ok(launch(base_args(tiny_teacher, small_data_dir, reference, **extra), nproc=2))
    else:
        reference = reference_run
    run = tmp_path / "resumed"
    check_ok(
        launch(
            base_args(
                tiny_teacher, small_data_dir, run, **extra, **{"--train.stop_after_steps": 3}
            ),
            nproc=2,
        )
    )
    assert [s for s, _ in losses(run)] == [1, 2, 3]
    second = launch(base_args(tiny_teacher, small_data_dir, run, **extra), nproc=2)
    check_ok(second)
    assert "resumed from" in second.stdout and "global_step3" in second.stdout
    assert losses(run) == losses(reference)  # every step, to the last bit
    assert sample_log(run) == sample_log(reference)
    assert _same_weights(_weights(run, 8), _weights(reference, 8))


@pytest.mark.slow  # ~84 s: resume is test_resume_is_bitwise_identical[fp32]; trackers across a
# resume: test_trackers.py; eval_on_start: test_probe.py
def test_resume_twice(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """Also: a validation before the first step (train.eval_on_start) changes no step, and a
    resumed run does not repeat it."""
    run = tmp_path / "twice"
    extra = {"--max-steps": 8, "--save-every": 4, "--train.eval_on_start": "true"}
    # Also: W&B (offline) and MLflow (its SQLite default in RUN_DIR) follow the run through
    # both requeues as one tracker run each.
    trackers = ["--train.report_to", "tensorboard", "wandb", "mlflow"]
    offline = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = base_args(tiny_teacher, small_data_dir, run, **extra, **{"--train.stop_after_steps": 3})
    check_ok(launch([*args, *trackers], nproc=2, env=offline))
    check_ok(launch([*args, *trackers], nproc=2, env=offline))  # steps 4..6
    last = base_args(tiny_teacher, small_data_dir, run, **extra)
    check_ok(launch([*last, *trackers], nproc=2, env=offline))
    assert losses(run) == losses(reference_run)
    assert _same_weights(_weights(run, 8), _weights(reference_run, 8))
    assert [r["step"] for r in eval_records(run)] == [0, 8]
    assert set(eval_records(run)[0]["eval"]) == set(eval_records(reference_run)[-1]["eval"])

    from mlflow.tracking import MlflowClient
    from wandb_log import read_run

    ids = json.loads((run / "trackers.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{run}/mlflow.db")
    logged = client.get_metric_history(ids["mlflow"], "train/loss")
    # steps 4..6 ran twice (the second session resumed from step 4's checkpoint): MLflow keeps
    # both values of a step; the last of each is the run's
    last_of = {m.step: m.value for m in sorted(logged, key=lambda m: m.timestamp)}
    assert sorted(last_of) == list(range(1, 9))
    assert client.get_run(ids["mlflow"]).data.params["train.max_steps"] == "8"
    sessions = [read_run(f) for f in sorted(run.glob("wandb/offline-run-*/run-*.wandb"))]
    assert len(sessions) == 3 and {s["id"] for s in sessions} == {ids["wandb"]}
    wandb_steps = [r["_step"] for s in sessions for r in s["history"] if "train/loss" in r]
    assert wandb_steps[:3] == [1, 2, 3] and wandb_steps[-1] == 8
    assert sessions[0]["config"]["train"]["report_to"] == ["tensorboard", "wandb", "mlflow"]


def _start_two_ranks(args: list[str], port: int) -> list[subprocess.Popen[str]]:
    """Two ranks started the way torchrun starts them (RANK/WORLD_SIZE/MASTER_*), so each
    process's own exit code is visible."""
    procs = []
    for rank in (0, 1):
        env = train_env(
            {
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.train", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    return procs


@pytest.mark.slow  # ~68 s: preemption mid-run, exit 42 and an exact resume: test_slurm_jobs.py
# (scancel --signal=USR1); exit 42 on a signal without Slurm: test_signal_during_start_up
def test_signal_checkpoints_and_exits_then_resume_matches(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    from pipeline_helpers import _free_port

    steps = 40
    reference = tmp_path / "reference"
    check_ok(
        launch(
            base_args(
                tiny_teacher, small_data_dir, reference, **{"--max-steps": steps, "--save-every": 0}
            ),
            nproc=2,
        )
    )
    run = tmp_path / "preempted"
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": steps, "--save-every": 0})
    procs = _start_two_ranks(args, _free_port())
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.is_file() and len(metrics.read_text().splitlines()) >= 3
    ):
        time.sleep(0.05)
    # SIGTERM to rank 1's whole process group (its data-loader worker too), as Slurm and
    # `kill -TERM -PGID` do; rank 0 is not signalled and learns it at the step boundary.
    os.killpg(procs[1].pid, signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [42, 42], [o[1][-2000:] for o in outs]
    assert "preempted (signal on another rank)" in outs[0][0]
    stopped = losses(run)[-1][0]
    assert 3 <= stopped < steps, stopped
    assert (run / "checkpoints" / "latest").read_text() == f"global_step{stopped}"
    check_ok(launch(args, nproc=2))
    assert losses(run) == losses(reference)
    assert _same_weights(_weights(run, steps), _weights(reference, steps))


# 2 -> 1 is slow: 1 -> 2 tests the universal checkpoint; 2 -> 1 conversion is in
# test_signal_during_start_up_exits_with_the_requeue_code.
@pytest.mark.parametrize(("before", "after"), [pytest.param(2, 1, marks=pytest.mark.slow), (1, 2)])
def test_resume_on_another_world_size(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, before: int, after: int
) -> None:
    extra = {
        "--max-steps": 8,
        "--save-every": 4,
        "--train.sample_log": "true",
        "--model.dropout": 0.0,
    }
    reference = tmp_path / "reference"
    check_ok(launch(base_args(tiny_teacher, small_data_dir, reference, **extra), nproc=before))
    run = tmp_path / "moved"
    check_ok(
        launch(
            base_args(
                tiny_teacher, small_data_dir, run, **extra, **{"--train.stop_after_steps": 4}
            ),
            nproc=before,
        )
    )
    result = launch(base_args(tiny_teacher, small_data_dir, run, **extra), nproc=after)
    check_ok(result)
    assert "universal" in result.stdout
    assert (run / "checkpoints" / "global_step4_universal").is_dir()
    # The same global batches, sample for sample, and the same masks (sample log holds views).
    assert sample_log(run) == sample_log(reference)
    got, want = dict(losses(run)), dict(losses(reference))
    assert got.keys() == want.keys() == set(range(1, 9))
    for step in range(5, 9):  # another reduction order: close, not bitwise
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    w_got, w_want = _weights(run, 8), _weights(reference, 8)
    assert all(torch.allclose(w_got[k], w_want[k], atol=1e-4) for k in w_want)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path,
    tiny_teacher: Path,
    small_data_dir: Path,
    reference_run: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "damaged"
    shutil.copytree(reference_run, run)
    shard = next((run / "checkpoints" / "global_step8").glob("*optim_states.pt"))
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    result = launch(
        base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 8, "--save-every": 4}),
        nproc=2,
    )
    check_ok(result)
    assert "skipping incomplete checkpoint" in result.stderr and "global_step8" in result.stderr
    assert "resumed from" in result.stdout and "global_step4" in result.stdout
    assert losses(run) == losses(reference_run)
    # A deleted file is caught the same way, and a checkpoint without COMMIT.json is never used.
    (run / "checkpoints" / "global_step8" / "COMMIT.json").unlink()
    from pipeline.checkpoint.store import find_resume

    found = find_resume(run, "auto")
    assert "no COMMIT.json" in capsys.readouterr().err
    assert found is not None and found.step == 4


def test_contradicting_config_is_refused(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    run = tmp_path / "contra"
    shutil.copytree(reference_run, run)
    result = launch(
        base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 10, "--student-layers": 3}),
        launcher="python",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "contradicts the checkpoint" in result.stderr and "student" in result.stderr


def test_a_changed_learning_rate_on_requeue_is_refused_or_recorded(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """Each checkpoint keeps the config it was saved under; a resume that changes a setting
    that shapes training is refused in one line, or with train.allow_config_change recorded
    with both values."""
    run = tmp_path / "requeue"
    shutil.copytree(reference_run, run)
    saved = run / "checkpoints" / "global_step8" / "config.yaml"
    commit = json.loads((saved.parent / "COMMIT.json").read_text())
    assert "config.yaml" in commit["files"]
    assert yaml.safe_load(saved.read_text())["resolved"]["max_steps"] == 8
    same = {"--max-steps": 8, "--save-every": 4, "--train.sample_log": "true"}
    changed = base_args(tiny_teacher, small_data_dir, run, **same, **{"--lr": 0.01})
    refused = launch(changed, launcher="python")  # its own exit code (torchrun says 1)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "optim.lr 0.0005 -> 0.01" in refused.stderr
    assert "--train.allow_config_change" in refused.stderr
    assert not (run / "config_changes.jsonl").exists()
    allowed = launch([*changed, "--train.allow_config_change"], nproc=2)  # a bare switch
    check_ok(allowed)
    assert "resuming step 8 with changed settings: optim.lr 0.0005 -> 0.01" in allowed.stdout
    records = [json.loads(x) for x in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["name"], r["before"], r["after"]) for r in records] == [
        (8, "optim.lr", 0.0005, 0.01)
    ]


@pytest.mark.slow  # ~13 s: keep_last in process in test_checkpoint.py
def test_keep_last_and_deepspeed_tools(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    run = tmp_path / "keep"
    check_ok(
        launch(
            base_args(
                tiny_teacher,
                small_data_dir,
                run,
                **{"--max-steps": 5, "--save-every": 1, "--train.keep_last": 2},
            ),
            launcher="python",
        )
    )
    kept = sorted(p.name for p in (run / "checkpoints").glob("global_step*"))
    assert kept == ["global_step4", "global_step5"]
    # DeepSpeed's own script reads the run folder through its `latest` file.
    out = tmp_path / "fp32"
    subprocess.run(
        [
            sys.executable,
            str(run / "checkpoints" / "zero_to_fp32.py"),
            str(run / "checkpoints"),
            str(out),
        ],
        check=True,
        capture_output=True,
        env=train_env(),
    )
    assert list(out.glob("*.safetensors")) or list(out.glob("*.bin"))


def _wait_for_handler(pid: int, sig: int, timeout: float = 120.0) -> None:
    """Until process ``pid`` catches ``sig`` (its SigCgt mask in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(
            next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
        )
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never installed a handler for signal {sig}")


def test_signal_during_start_up_exits_with_the_requeue_code(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """SIGUSR1 while the process is still starting (imports, teacher, DeepSpeed, and here the
    conversion of a 2-rank checkpoint for 1 rank): no crash, no step, no new checkpoint; exit 42
    so Slurm requeues, and the checkpoint it resumed from stays the newest."""
    run = tmp_path / "startup"
    shutil.copytree(reference_run, run)
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 12, "--save-every": 4})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *args],
        cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_handler(proc.pid, signal.SIGUSR1)  # installed first: long before the first step
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 42, (out[-2000:], err[-3000:])
    assert "before the first step" in out and "global_step8" in out, out[-2000:]
    assert (run / "checkpoints" / "latest").read_text() == "global_step8"
    assert sorted(p.name for p in (run / "checkpoints").glob("global_step*[0-9]")) == [
        "global_step4",
        "global_step8",
    ]
    assert max(r["step"] for r in step_records(run)) == 8


NARROW = {
    "--model.student_hidden": 16, "--model.student_heads": 2, "--model.init": "select",
    "--loss.alpha_cos": 0, "--loss.alpha_hidden": 1, "--loss.alpha_attn": 1,
    "--loss.alpha_relation": 1, "--max-steps": 6, "--save-every": 3, "--model.dropout": 0.0,
}  # fmt: skip


@pytest.mark.slow  # ~59 s: projections in the engine state: test_objective.py; narrow 2-rank
# students: test_integration_training recipes; exact resume: test_resume_is_bitwise_identical
def test_narrow_student_with_projections_resumes_exactly(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """A narrower student with TinyBERT's projections and MiniLMv2's relations: the projections
    are in the checkpoint (not in the export), and resume is bitwise."""
    from pipeline.publish.run_model import load_run_model

    reference = tmp_path / "reference"
    check_ok(launch(base_args(tiny_teacher, small_data_dir, reference, **NARROW), nproc=2))
    run = tmp_path / "resumed"
    stop = {**NARROW, "--train.stop_after_steps": 2}
    check_ok(launch(base_args(tiny_teacher, small_data_dir, run, **stop), nproc=2))
    check_ok(launch(base_args(tiny_teacher, small_data_dir, run, **NARROW), nproc=2))
    assert losses(run) == losses(reference)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"hid", "att", "rel"} <= set(first)
    final = _weights(run, 6)
    assert _same_weights(final, _weights(reference, 6))
    projections = {k for k in final if k.startswith("projections.")}
    assert projections == {
        f"projections.{p}.{w}" for p in ("embed", "hidden") for w in ("weight", "bias")
    }
    model, _ = load_run_model(run)
    assert model.config.dim == 16 and set(model.state_dict()).isdisjoint(projections)


@pytest.mark.slow
def test_narrow_student_with_projections_moves_to_another_world_size(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """2 ranks -> 1 from step 3 through the universal checkpoint, projections included."""
    reference = tmp_path / "reference"
    check_ok(launch(base_args(tiny_teacher, small_data_dir, reference, **NARROW), nproc=2))
    moved = tmp_path / "moved"
    stop = {**NARROW, "--train.stop_after_steps": 3}
    check_ok(launch(base_args(tiny_teacher, small_data_dir, moved, **stop), nproc=2))
    result = launch(base_args(tiny_teacher, small_data_dir, moved, **NARROW), nproc=1)
    check_ok(result)
    assert "universal" in result.stdout
    got, ref = dict(losses(moved)), dict(losses(reference))
    for step in range(4, 7):
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step
    w_got, w_want = _weights(moved, 6), _weights(reference, 6)
    assert any(k.startswith("projections.") for k in w_want)
    assert all(torch.allclose(w_got[k], w_want[k], atol=1e-4) for k in w_want)


def test_changing_the_objective_parameters_is_refused(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    run = tmp_path / "contra"
    shutil.copytree(reference_run, run)
    result = launch(
        base_args(
            tiny_teacher, small_data_dir, run, **{"--max-steps": 10, "--loss.alpha_hidden": 1}
        ),
        launcher="python",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "contradicts the checkpoint" in result.stderr and "objective_params" in result.stderr
