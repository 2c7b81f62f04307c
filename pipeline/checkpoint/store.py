"""Checkpoints on disk: the ZeRO checkpoint, our per-rank state, and the commit marker.

Layout under ``RUN_DIR/checkpoints``::

    latest                        DeepSpeed's pointer; names the newest *complete* checkpoint
    global_stepN/                 engine.save_checkpoint (model, ZeRO optimizer shards, loss
                                  scaler) + distil_rank{R}.pt (RNG states, data cursor)
                                  + COMMIT.json (written last, by rank 0, from what every rank
                                  reports it wrote: name, bytes and sha256 of each file)
    global_stepN_universal/       DeepSpeed universal checkpoint, made when resuming on another
                                  number of ranks (:mod:`.universal`)
    set-aside-TIME/global_stepN/  newer checkpoints of an abandoned line of history, kept
                                  (:mod:`.history`)

A checkpoint is complete when COMMIT.json exists and every file it lists has the recorded size
(:func:`problem`); the checkpoint chosen for a resume is also checked byte for byte against the
recorded sha256 (:func:`verify_checksums`). Anything else is skipped on resume, with a warning.
Writing one is :mod:`.save`.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.errors import UserError
from data_prep.versioned import load_versioned

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

    @property
    def commit_index(self) -> int:
        """The order of commits in the run folder (older COMMIT.json files: by step)."""
        return int(self.commit.get("commit_index", self.step))


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


def _recorded(entry: Any) -> tuple[int, str | None]:
    """(bytes, sha256) of a COMMIT file entry (older records hold the size alone)."""
    if isinstance(entry, dict):
        return int(entry["bytes"]), entry.get("sha256")
    return int(entry), None


def problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` is not complete, or None (sizes only: cheap)."""
    marker = path / COMMIT
    if not marker.is_file():
        return "no COMMIT.json (the save did not finish)"
    try:
        commit = load_commit(path)
    except UserError:
        return "COMMIT.json is unreadable or of another format"
    for name, entry in commit.get("files", {}).items():
        f = path / name
        size, _ = _recorded(entry)
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, {size} were written"
    return None


def sha256_of(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(path: Path) -> str | None:
    """The first file of the checkpoint whose bytes differ from their recorded sha256, or None.
    Reads every file once (about 1.5 GB/s on one core of these machines)."""
    commit = load_commit(path)
    for name, entry in commit.get("files", {}).items():
        _, recorded = _recorded(entry)
        if recorded is not None and sha256_of(path / name) != recorded:
            return f"{name} does not match its sha256 in COMMIT.json (the file changed on disk)"
    return None


def read_checkpoint(path: Path) -> CheckpointInfo:
    why = problem(path)
    if why:
        raise UserError(
            f"{path}: not a complete checkpoint ({why}); use --resume auto to take the newest "
            "complete one"
        )
    commit = load_commit(path)
    return CheckpointInfo(path, int(commit["step"]), commit)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint folders of the run (complete or not), by step."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _TAG.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def complete_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """The complete checkpoints of the run, in commit order."""
    found = [read_checkpoint(p) for p in list_checkpoints(run_dir) if problem(p) is None]
    return sorted(found, key=lambda c: c.commit_index)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def newest_good(run_dir: str | Path, verify: bool, quiet: bool = False) -> CheckpointInfo | None:
    """The newest complete checkpoint of the run in commit order whose files, with ``verify``,
    also match their checksums; incomplete and damaged ones are skipped with a warning."""
    complete = []
    for path in list_checkpoints(run_dir):
        why = problem(path)
        if why is None:
            complete.append(read_checkpoint(path))
        elif not quiet:
            warn(f"skipping incomplete checkpoint {path}: {why}")
    for ckpt in sorted(complete, key=lambda c: c.commit_index, reverse=True):
        why = verify_checksums(ckpt.path) if verify else None
        if why is None:
            return ckpt
        if not quiet:
            warn(f"skipping damaged checkpoint {ckpt.path}: {why}")
    return None


def find_resume(
    run_dir: str | Path, resume: str, verify: bool = True, quiet: bool = False
) -> CheckpointInfo | None:
    """The checkpoint to resume from: ``auto`` the newest good one, ``none`` none, or a path
    (refused in one line when incomplete or, with ``verify``, damaged)."""
    if resume == "none":
        return None
    if resume == "auto":
        return newest_good(run_dir, verify, quiet)
    found = read_checkpoint(Path(resume))
    why = verify_checksums(found.path) if verify else None
    if why:
        raise UserError(f"--resume {resume}: {why}; resume from another checkpoint")
    return found


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
            "Use the run's original settings, or start a new run with a new --output"
        )


# --- per-rank state: plain tensors, lists and numbers, so it loads with weights_only=True -------
def capture_rank_state(step: int, consumed: int, world_size: int) -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "step": step,
        "consumed_samples": consumed,
        "world_size": world_size,
        "python_rng": [version, list(mt), gauss],
        "numpy_rng": [
            str(kind),
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python_rng"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])


def load_rank_state(ckpt: CheckpointInfo, rank: int) -> dict[str, Any] | None:
    """This rank's state of the checkpoint, read with ``weights_only=True`` (no code runs); None
    when there is none or it is of an older format (the RNG streams then start afresh)."""
    path = rank_state_path(ckpt.path, rank)
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the pickled numpy state of older releases, or a damaged file
        warn(f"{path}: not readable as plain tensors ({type(exc).__name__}); fresh RNG streams")
        return None
    return state


_RANK_FILE = re.compile(r"(?:zero_pp_rank_|distil_rank)0*(\d+)[_.]")


def owner_of(name: str) -> int:
    """The rank that writes a checkpoint file: its ZeRO optimizer shard and its own state file
    name it; everything else (model states, the commit marker) is rank 0's."""
    match = _RANK_FILE.search(name)
    return int(match.group(1)) if match else 0
