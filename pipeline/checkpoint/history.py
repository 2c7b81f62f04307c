"""A run folder holds one line of history, and nothing committed is ever deleted by a newer run.

* ``--resume none`` into a folder that holds complete checkpoints is refused in one line (a new
  ``--output``, or ``--resume auto``): a second line of history beside the first would be
  pruned, resumed or exported in its place.
* Resuming from an older checkpoint (``--resume PATH``) moves every complete checkpoint
  committed after it aside, into ``checkpoints/set-aside-TIME/``, kept and reported: ``--resume
  auto`` never finds the abandoned line again, and nothing of it is lost.
* Pruning (``train.keep_last``) keeps the checkpoints committed last, in commit order (the
  ``commit_index`` of COMMIT.json), and removes only folders of this line: complete ones beyond
  ``keep_last`` and partial ones older than the newest complete one (saves that died).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from data_prep.atomic import fsync_dir
from data_prep.errors import UserError
from pipeline.checkpoint.store import (
    CheckpointInfo,
    checkpoint_root,
    complete_checkpoints,
    list_checkpoints,
    problem,
)

SET_ASIDE = "set-aside-"
RUN_FILES = (
    "config.yaml",
    "checkpoints",
    "model",
    "metrics.jsonl",
    "tensorboard",
    "samples",
    "pruning",
    "trackers.json",
    "config_changes.jsonl",
    "wandb",
    "mlflow.db",
)
"""What pipeline.train writes into RUN_DIR: a folder holding none of it is not a run folder."""


def check_run_folder(run_dir: str | Path) -> None:
    """Refuse a non-empty ``--output`` that is not a run folder (someone else's files)."""
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output {folder}: exists and is not a folder; choose another RUN_DIR")
    others = folder.is_dir() and any(folder.iterdir())
    if others and not any((folder / name).exists() for name in RUN_FILES):
        raise UserError(
            f"--output {folder}: not a run folder (it holds other files); choose a new or "
            "empty RUN_DIR, nothing was changed"
        )


def set_aside(run_dir: str | Path, paths: list[Path], why: str) -> Path:
    """Move checkpoint folders (with their universal conversions) into a new
    ``checkpoints/set-aside-TIME/``; returns that folder."""
    root = checkpoint_root(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = root / f"{SET_ASIDE}{stamp}"
    n = 1
    while folder.exists():
        n += 1
        folder = root / f"{SET_ASIDE}{stamp}-{n}"
    folder.mkdir(parents=True)
    (folder / "WHY.txt").write_text(f"{why}\n")
    for path in paths:
        for p in (path, path.with_name(f"{path.name}_universal")):
            if p.exists():
                p.rename(folder / p.name)
    fsync_dir(root)
    return folder


def start_line(
    run_dir: str | Path, resume: str, chosen: CheckpointInfo | None, log: Callable[[str], None]
) -> None:
    """Keep one line of history before a run starts (rank 0): refuse ``--resume none`` over
    checkpoints; set aside what was committed after an older checkpoint resumed from."""
    check_run_folder(run_dir)
    complete = complete_checkpoints(run_dir)
    if resume == "none" and complete:
        raise UserError(
            f"{run_dir} holds checkpoints up to step {max(c.step for c in complete)}: --resume none "
            "would start a second run in the same folder; pass a new --output, or --resume auto "
            "to continue this run"
        )
    if chosen is None:
        return
    inside = chosen.path.parent.resolve() == checkpoint_root(run_dir).resolve()
    newer = [
        c for c in complete if not inside or c.commit_index > chosen.commit_index
    ]  # resuming from another folder: every checkpoint here belongs to another line
    newer = [c for c in newer if c.path.resolve() != chosen.path.resolve()]
    if newer:
        steps = ", ".join(str(c.step) for c in newer)
        folder = set_aside(run_dir, [c.path for c in newer], f"resumed from {chosen.path}")
        log(
            f"resuming from {chosen.path}: the checkpoints committed after it (steps {steps}) "
            f"are set aside in {folder}, not deleted"
        )


def prune(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Remove checkpoints of this line beyond the last ``keep_last`` commits, and partial
    saves older than the newest commit (rank 0, after a commit). Returns what was removed."""
    complete = complete_checkpoints(run_dir)
    if not complete:
        return []
    keep = {c.path for c in complete[-max(keep_last, 1) :]}
    newest = complete[-1]
    removed = []
    for path in list_checkpoints(run_dir):
        if path in keep:
            continue
        whole = problem(path) is None
        old_partial = not whole and _step(path) < newest.step
        if whole or old_partial:
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(path.with_name(f"{path.name}_universal"), ignore_errors=True)
            removed.append(path)
    return removed


def _step(path: Path) -> int:
    return int(path.name.removeprefix("global_step"))
