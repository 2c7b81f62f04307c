"""DeepSpeed's universal checkpoint: how a run resumes on another number of ranks.

:func:`ensure_universal` converts a committed ZeRO checkpoint once (rank 0; the other ranks wait
for the agreement, see :meth:`pipeline.checkpoint.manager.CheckpointManager.resume`), into
``global_stepN_universal/`` beside it, marked done last. Preemption signals are ignored by the
converter (Slurm signals every process of a task): the conversion finishes, the trainer stops.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from data_prep.atomic import fsync_dir
from pipeline.checkpoint.store import CheckpointInfo
from pipeline.distributed.failpoints import failpoint


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
    if out.exists():  # our own conversion, killed before it was marked done
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(ckpt.path), "--output_folder", str(tmp), "--inject_missing_state",
        "--num_extract_workers", "2", "--num_merge_workers", "1",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_ignore_preemption)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(
            f"converting {ckpt.path} to a universal checkpoint failed (exit {result.returncode}): "
            f"{tail[0]}"
        )
    failpoint("universal:converted")
    tmp.rename(out)
    done.write_text(json.dumps({"from": ckpt.tag}))
    fsync_dir(out.parent)
    return out
