"""Saving a checkpoint: collective, committed only when every rank's files are on disk.

Every rank writes its part (DeepSpeed's ZeRO checkpoint: rank 0 the model states, each rank its
optimizer shard; ours: each rank its RNG state and data cursor), fsyncs the files it wrote and
reports them (name, bytes, sha256) on the control group; rank 0 also writes the resolved config
the run is saving under (``config.yaml``: the run's full record, checkpoint by checkpoint). Rank 0 writes COMMIT.json from those
reports, never from a listing of the folder (on a network file system a listing just after other
nodes wrote can miss their files), then moves ``latest``, then prunes by commit order.

A rank whose writes fail (a full disk, a lost mount) joins the barrier DeepSpeed's other ranks
wait in at the end of ``save_checkpoint`` (:func:`~pipeline.distributed.comm.release_peers`),
so every rank reaches the agreement at once: none commits, rank 0 removes the uncommitted
folder (its own partial output), and every rank raises :class:`SaveFailed` naming the rank and
the cause. The previous checkpoint stays the newest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from data_prep.atomic import atomic_open, fsync_dir, write_json
from data_prep.versioned import stamp
from pipeline.checkpoint.history import prune, set_aside
from pipeline.checkpoint.store import (
    COMMIT,
    COMMIT_FORMAT,
    COMMIT_VERSION,
    capture_rank_state,
    checkpoint_root,
    complete_checkpoints,
    owner_of,
    problem,
    rank_state_path,
    sha256_of,
    tag_for,
)
from pipeline.distributed.comm import ControlGroup, one_line, release_peers
from pipeline.distributed.failpoints import failpoint


class SaveFailed(RuntimeError):
    """A checkpoint could not be written on some rank; nothing was committed."""


def _own_files(path: Path, rank: int) -> dict[str, dict[str, Any]]:
    """The files of ``path`` this rank wrote, fsynced: name -> bytes and sha256."""
    out = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and not f.name.startswith(".") and owner_of(f.name) == rank:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            out[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_of(f)}
    return out


FULL_BELOW_BYTES = 64 << 20


def full_disk_note(root: Path, cause: str) -> str:
    """What the cause may not say: torch's zip writer reports a short write on a full file system
    as ``unexpected pos 14080 vs 13974``, without the errno. Measured at the failure, before any
    partial file is removed: a file system with less than 1 % of its size free (at least 1 MiB,
    at most 64 MiB) is called full."""
    if "No space left" in cause:
        return ""
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return ""
    if usage.free >= min(FULL_BELOW_BYTES, max(usage.total // 100, 1 << 20)):
        return ""
    return (
        f" (No space left on device: the file system holding {root} has {usage.free:,} bytes free)"
    )


CONFIG_FILE = "config.yaml"
"""The resolved config a checkpoint was saved under, in its folder (rank 0's, listed in COMMIT)."""


def _write_part(
    engine: Any, root: Path, tag: str, step: int, consumed: int, config: dict[str, Any] | None
) -> dict[str, Any]:
    """This rank's files of the checkpoint, written and fsynced; what it wrote."""
    rank, world = dist.get_rank(), dist.get_world_size()
    client_state = {"step": step, "consumed_samples": consumed}
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    except Exception:
        release_peers()  # the others wait in DeepSpeed's closing barrier: let them on
        raise
    path = root / tag
    with atomic_open(rank_state_path(path, rank), "wb") as fh:
        torch.save(capture_rank_state(step, consumed, world), fh)
    if rank == 0 and config is not None:
        with atomic_open(path / CONFIG_FILE, "w") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
    files = _own_files(path, rank)
    if rank == 0:
        fsync_dir(path)
    return files


def save(
    engine: Any,
    run_dir: str | Path,
    step: int,
    consumed: int,
    identity: dict[str, Any],
    keep_last: int,
    control: ControlGroup,
    config: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the committed checkpoint's path; raises
    :class:`SaveFailed` on every rank when any rank could not write its part."""
    rank, world = dist.get_rank(), dist.get_world_size()
    root = checkpoint_root(run_dir)
    tag = tag_for(step)
    path = root / tag
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if path.exists():  # left by a run that died saving this very step (or set aside if whole)
            if problem(path) is None:
                set_aside(run_dir, [path], f"step {step} is being saved again")
            else:
                shutil.rmtree(path)
    control.barrier()
    files: dict[str, Any] = {}
    cause = None
    try:
        files = _write_part(engine, root, tag, step, consumed, config)
    except Exception as exc:
        cause = one_line(exc) + full_disk_note(root, str(exc))
    failpoint("save:written")
    reports = control.gather((cause, files))
    failed = [(r, c) for r, (c, _) in enumerate(reports) if c is not None]
    if failed:
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)  # uncommitted: our own partial output
        control.barrier()
        who = "; ".join(f"rank {r}: {c}" for r, c in failed)
        raise SaveFailed(f"checkpoint {path} was not saved ({who})")
    if rank == 0:
        previous = complete_checkpoints(run_dir)
        record = {
            "step": step,
            "consumed_samples": consumed,
            "world_size": world,
            "commit_index": 1 + max((c.commit_index for c in previous), default=0),
            "identity": identity,
            "files": {name: f for _, part in reports for name, f in part.items()},
        }
        write_json(path / COMMIT, stamp(record, COMMIT_FORMAT, COMMIT_VERSION))
        failpoint("save:committed")
        with atomic_open(root / "latest", "w") as fh:
            fh.write(tag)
        prune(run_dir, keep_last)
    control.barrier()
    return path
