"""Crash-safe file writing: write under a temporary name, fsync, then rename into place; and
output folders that never destroy what a command did not make (:func:`atomic_dir`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from data_prep.errors import UserError


def tmp_name(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed to ``path``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears complete or not at all.

    The data goes to a hidden temporary file in the same folder, which is fsynced and renamed
    over ``path`` when the block ends without an exception; on an exception it is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


OUTPUT_MARKER = ".distil-output.json"
"""Written into every folder a command of ours builds whole (an export, a tokenizer): which
command made it. Only such a folder, made by the same command, may be replaced (``--overwrite``)."""


def output_owner(path: Path) -> str | None:
    """The command whose output ``path`` is (its marker), or None."""
    try:
        return str(json.loads((path / OUTPUT_MARKER).read_text())["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_output_dir(path: str | os.PathLike[str], command: str, overwrite: bool) -> None:
    """Refuse an output path a command may not write to, before any work: a file, a folder that
    holds anything but an earlier output of ``command``, or such an output without
    ``overwrite``. An absent path or an empty folder is fine."""
    final = Path(path)
    if not final.exists():
        return
    if not final.is_dir():
        raise UserError(f"{final}: exists and is not a folder; choose another output path")
    if not any(final.iterdir()):
        return
    owner = output_owner(final)
    if owner is None:
        raise UserError(
            f"{final}: the folder holds other files (not an output of {command}); "
            "choose a new or empty output folder, nothing was changed"
        )
    if owner != command:
        raise UserError(
            f"{final}: holds the output of {owner}, not of {command}; choose another output folder"
        )
    if not overwrite:
        raise UserError(
            f"{final}: holds an earlier output of {command}; pass --overwrite to replace it, or "
            "choose another output folder"
        )


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str], command: str, overwrite: bool = False
) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; put it in place only when the
    block ends without an exception (otherwise it is removed and ``path`` is left as it was).

    ``path`` may be absent or an empty folder; replacing an earlier output of ``command`` needs
    ``overwrite`` and never leaves nothing at any moment that matters: the old folder is moved
    aside, the new one renamed in, and the old one removed last. Anything else is refused
    (:func:`check_output_dir`), before the block runs and again before anything is moved.
    """
    final = Path(path)
    check_output_dir(final, command, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    aside: Path | None = None
    try:
        yield tmp
        write_json(tmp / OUTPUT_MARKER, {"command": command})
        check_output_dir(final, command, overwrite)  # the folder may have changed meanwhile
        if final.exists():
            aside = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(aside)
        tmp.rename(final)
        fsync_dir(final.parent)
        if aside is not None:
            shutil.rmtree(aside)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=False)
        fh.write("\n")
