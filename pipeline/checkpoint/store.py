"""Checkpoints that never lose work: ZeRO checkpoint + per-rank state + a commit marker.

Layout under ``RUN_DIR/checkpoints``::

    latest                        DeepSpeed's pointer; names the newest *complete* checkpoint
    global_stepN/                 engine.save_checkpoint (model, ZeRO optimizer shards, scheduler,
                                  loss scaler) + distil_rank{R}.pt (RNG states, data cursor)
                                  + COMMIT.json (written last, by rank 0, after every rank's
                                  files are on disk and all ranks agreed)
    global_stepN_universal/       DeepSpeed universal checkpoint, made when resuming on another
                                  number of ranks

A checkpoint is complete when COMMIT.json exists and every file it lists has the recorded size;
anything else is ignored on resume (with a warning) and never deletes the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from data_prep.atomic import atomic_open, fsync_dir, write_json
from data_prep.errors import UserError
from data_prep.versioned import load_versioned, stamp
from pipeline.distributed.comm import ControlGroup

COMMIT = "COMMIT.json"
COMMIT_FORMAT = "distil-checkpoint"
COMMIT_VERSION = 1
_TAG = re.compile(r"^global_step(\d+)$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"global_step{step}"


def rank_state_path(ckpt: Path, rank: int) -> Path:
    return ckpt / f"distil_rank{rank:05d}.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    commit: dict[str, Any]

    @property
    def world_size(self) -> int:
        return int(self.commit["world_size"])

    @property
    def tag(self) -> str:
        return self.path.name


def load_commit(path: Path) -> dict[str, Any]:
    """The commit record of the checkpoint at ``path`` (format and version checked)."""
    return load_versioned(
        path / COMMIT,
        COMMIT_FORMAT,
        COMMIT_VERSION,
        "the checkpoint is incomplete or from another version of distil; use --resume auto to "
        "take the newest complete one",
        unversioned=1,
    )


def _problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` is not complete, or None."""
    marker = path / COMMIT
    if not marker.is_file():
        return "no COMMIT.json (the save did not finish)"
    try:
        commit = load_commit(path)
    except UserError:
        return "COMMIT.json is unreadable or of another format"
    for name, size in commit.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, {size} were written"
    return None


def read_checkpoint(path: Path) -> CheckpointInfo:
    problem = _problem(path)
    if problem:
        raise UserError(
            f"{path}: not a complete checkpoint ({problem}); use --resume auto to take the newest complete one"
        )
    commit = load_commit(path)
    return CheckpointInfo(path, int(commit["step"]), commit)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _TAG.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def find_resume(run_dir: str | Path, resume: str, warn: bool = True) -> CheckpointInfo | None:
    """The checkpoint to resume from: newest complete (``auto``), none, or a given path."""
    if resume == "none":
        return None
    if resume != "auto":
        return read_checkpoint(Path(resume))
    for path in reversed(list_checkpoints(run_dir)):
        problem = _problem(path)
        if problem is None:
            return read_checkpoint(path)
        if warn:
            warnings.warn(f"skipping incomplete checkpoint {path}: {problem}", stacklevel=2)
            print(
                f"warning: skipping incomplete checkpoint {path}: {problem}",
                file=sys.stderr,
                flush=True,
            )
    return None


def check_compatible(ckpt: CheckpointInfo, identity: dict[str, Any]) -> None:
    """Refuse a checkpoint whose model shape, tokenizer or data differ from this run's."""
    saved = ckpt.commit.get("identity", {})
    diffs = []
    for key, value in identity.items():
        if key in saved and saved[key] != value:
            if isinstance(value, dict):
                changed = sorted(
                    k for k in set(value) | set(saved[key]) if value.get(k) != saved[key].get(k)
                )
                diffs.append(f"{key} ({', '.join(changed[:6])})")
            else:
                diffs.append(f"{key} ({saved[key]} -> {value})")
    if diffs:
        raise UserError(
            f"{ckpt.path}: this run's config contradicts the checkpoint: {'; '.join(diffs)} differ. "
            "Use the run's original settings, or --resume none with a new --output"
        )


def capture_rank_state(step: int, consumed: int, world_size: int) -> dict[str, Any]:
    state: dict[str, Any] = {
        "step": step,
        "consumed_samples": consumed,
        "world_size": world_size,
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])


_RANK_FILE = re.compile(r"(?:zero_pp_rank_|distil_rank)0*(\d+)[_.]")


def owner_of(name: str) -> int:
    """The rank that writes a checkpoint file: its ZeRO optimizer shard and its own state file
    name it; everything else (model states, the commit marker) is rank 0's."""
    match = _RANK_FILE.search(name)
    return int(match.group(1)) if match else 0


def _fsync_own_files(path: Path, rank: int) -> None:
    """fsync the files of ``path`` this rank wrote (each file by one rank: W + 2 fsyncs per save,
    not W x (W + 2)); rank 0 also syncs the folder."""
    for f in sorted(path.iterdir()):
        if f.is_file() and not f.name.startswith(".") and owner_of(f.name) == rank:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    if rank == 0:
        fsync_dir(path)


def save(
    engine: Any,
    run_dir: str | Path,
    step: int,
    consumed: int,
    identity: dict[str, Any],
    keep_last: int,
    control: ControlGroup,
) -> Path:
    """Collective: every rank calls it. Returns the committed checkpoint's path."""
    rank, world = dist.get_rank(), dist.get_world_size()
    root = checkpoint_root(run_dir)
    tag = tag_for(step)
    path = root / tag
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # left by a run that died while saving this very step
    control.barrier()
    client_state = {"step": step, "consumed_samples": consumed}
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    state = capture_rank_state(step, consumed, world)
    with atomic_open(rank_state_path(path, rank), "wb") as fh:
        torch.save(state, fh)
    _fsync_own_files(path, rank)
    if not control.all(rank_state_path(path, rank).is_file()):
        raise RuntimeError(
            f"checkpoint {path}: a rank failed to write its state; the previous checkpoint stays the newest"
        )
    if rank == 0:
        files = {
            str(f.relative_to(path)): f.stat().st_size
            for f in sorted(path.rglob("*"))
            if f.is_file()
        }
        record = {
            "step": step,
            "consumed_samples": consumed,
            "world_size": world,
            "identity": identity,
            "files": files,
        }
        write_json(path / COMMIT, stamp(record, COMMIT_FORMAT, COMMIT_VERSION))
        with atomic_open(root / "latest", "w") as fh:
            fh.write(tag)
        _prune(root, keep_last)
    control.barrier()
    return path


def _step_of(path: Path) -> int:
    match = _TAG.match(path.name)
    return int(match.group(1)) if match else -1


def _prune(root: Path, keep_last: int) -> None:
    """Delete old checkpoints: keep the newest ``keep_last`` complete ones; drop stale partial ones."""
    paths = list_checkpoints(root.parent)
    complete = [p for p in paths if _problem(p) is None]
    keep = set(complete[-max(keep_last, 1) :])
    newest = complete[-1] if complete else None
    for p in paths:
        if p in keep:
            continue
        older = newest is not None and _step_of(p) < _step_of(newest)
        if p in complete or older:
            shutil.rmtree(p, ignore_errors=True)
            shutil.rmtree(root / f"{p.name}_universal", ignore_errors=True)


def _ignore_preemption() -> None:
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def universal_path(ckpt: CheckpointInfo) -> Path:
    return ckpt.path.parent / f"{ckpt.tag}_universal"


def ensure_universal(ckpt: CheckpointInfo) -> Path:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (rank 0 calls this), once."""
    out = universal_path(ckpt)
    done = out / "DISTIL_DONE"
    if done.is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(ckpt.path),
        "--output_folder",
        str(tmp),
        "--inject_missing_state",
        "--num_extract_workers",
        "2",
        "--num_merge_workers",
        "1",
    ]
    # Slurm signals every process of a task: the conversion finishes, the trainer then stops.
    result = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_ignore_preemption)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"converting {ckpt.path} to a universal checkpoint failed:\n{tail}")
    tmp.rename(out)
    done.write_text(json.dumps({"from": ckpt.tag}))
    fsync_dir(out.parent)
    return out


def load_rank_state(ckpt: CheckpointInfo, rank: int) -> dict[str, Any] | None:
    path = rank_state_path(ckpt.path, rank)
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state
