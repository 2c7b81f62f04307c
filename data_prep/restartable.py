"""One mechanism for every restartable job of ours: data prep and the teacher cache.

A job works in one folder on a fixed list of *units* (work units of the corpus, shards of the
cache) and can be killed at any moment and run again:

* the **plan** (the settings that shape the output) is written once, by the first run; every
  restart compares its own settings with it and is refused, naming each difference, when they
  differ (:meth:`RestartableJob.check_plan`);
* a unit is **done** when its marker exists and every file the marker lists has the recorded size
  (:meth:`RestartableJob.done`); the marker is written last, after the unit's files are fsynced
  under their final names (:meth:`RestartableJob.commit`), so a killed unit is simply redone;
* before a unit is redone, the **temporaries** a killed attempt left (``.NAME.tmp-PID``, the
  names :func:`data_prep.atomic.tmp_name` gives) are removed, for that unit only: other tasks of
  an array job may be writing theirs beside them (:meth:`RestartableJob.remove_temporaries`);
* **finalize** waits (a bounded time) for every marker, merges their records and publishes the
  manifest last, atomically: the manifest's presence means the whole job is done
  (:meth:`RestartableJob.finished_records`, :meth:`RestartableJob.publish`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.atomic import fsync_dir, write_json
from data_prep.errors import UserError
from data_prep.versioned import load_versioned, stamp


@dataclass(frozen=True)
class RestartableJob:
    """The folder of a restartable job and the names of its files."""

    folder: Path
    what: str  # "data prep", "teacher cache": names the job in messages
    plan_name: str
    plan_format: str
    plan_version: int
    marker_of: Callable[[str], Path]  # unit key -> its done marker
    rerun: str  # what to do about unfinished units: "rerun the same ... command"

    # --- the plan ------------------------------------------------------------------------------
    @property
    def plan_path(self) -> Path:
        return self.folder / self.plan_name

    def read_plan(self) -> dict[str, Any] | None:
        """The plan of an earlier run, or None for a fresh folder."""
        if not self.plan_path.is_file():
            return None
        return load_versioned(
            self.plan_path,
            self.plan_format,
            self.plan_version,
            f"the {self.what} in {self.folder} was started by another version of distil; "
            "use another output folder",
            unversioned=1,
        )

    def check_plan(
        self, plan: dict[str, Any], differences: Callable[[dict[str, Any]], list[str]]
    ) -> bool:
        """True when the folder holds a plan that agrees with ``plan`` (a restart); False for a
        fresh folder. ``differences(old)`` names what differs; anything is refused in one line."""
        old = self.read_plan()
        if old is None:
            self.refuse_foreign()
            return False
        diffs = differences(old)
        if diffs:
            raise UserError(
                f"{self.plan_path}: {self.folder} holds a {self.what} started with other "
                f"settings; differs: {'; '.join(diffs)}. Finish it with its settings, or write "
                "to another output folder"
            )
        return True

    def refuse_foreign(self) -> None:
        """A folder without a plan must be new or empty: the job never writes among (or later
        replaces) files it did not make."""
        if self.folder.exists() and (not self.folder.is_dir() or any(self.folder.iterdir())):
            raise UserError(
                f"{self.folder}: holds other files (not a {self.what} of ours: no "
                f"{self.plan_name}); choose a new or empty output folder, nothing was changed"
            )

    def write_plan(self, plan: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.plan_path, stamp(plan, self.plan_format, self.plan_version))

    # --- units ---------------------------------------------------------------------------------
    def record(self, unit: str) -> dict[str, Any] | None:
        """The marker of a done unit, or None when the unit is not done (no marker, an
        unreadable one, or a file it lists missing or of another size)."""
        marker = self.marker_of(unit)
        if not marker.is_file():
            return None
        try:
            record: dict[str, Any] = json.loads(marker.read_text())
        except ValueError:
            return None
        for rel, size in record.get("files", {}).items():
            path = self.folder / rel
            if not path.is_file() or path.stat().st_size != size:
                return None
        return record

    def done(self, unit: str) -> bool:
        return self.record(unit) is not None

    def remove_temporaries(self, places: Iterable[tuple[Path, str]]) -> None:
        """Delete ``FOLDER/.PREFIX*.tmp-*`` for each (folder, prefix): what a killed attempt at
        one unit left under temporary names (never renamed into place)."""
        for folder, prefix in places:
            if folder.is_dir():
                for path in folder.glob(f".{prefix}*.tmp-*"):
                    path.unlink(missing_ok=True)

    def commit(self, unit: str, record: dict[str, Any], files: Iterable[Path]) -> None:
        """Mark ``unit`` done: its files (already under their final names) are fsynced and
        listed with their sizes in the marker, which is written last."""
        listed: dict[str, int] = {}
        folders = set()
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            listed[os.path.relpath(path, self.folder)] = path.stat().st_size
            folders.add(path.parent)
        for folder in sorted(folders):
            fsync_dir(folder)
        write_json(self.marker_of(unit), {**record, "files": listed})

    # --- finalize ------------------------------------------------------------------------------
    def finished_records(self, units: list[str], wait_s: float = 0.0) -> list[dict[str, Any]]:
        """Every unit's record, in order; refused in one line when some are not done.

        ``wait_s``: how long to wait for markers other nodes wrote to become visible here
        (network file systems cache directory lookups for a few seconds).
        """
        deadline = time.monotonic() + wait_s
        while True:
            records = {unit: self.record(unit) for unit in units}
            missing = [unit for unit, r in records.items() if r is None]
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(2.0)
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise UserError(
                f"{self.folder}: {len(missing)} of {len(units)} units are not finished "
                f"({shown}); {self.rerun}"
            )
        return [r for r in records.values() if r is not None]

    def publish(self, name: str, body: dict[str, Any]) -> Path:
        """Write the job's manifest (atomically): the last file a finished job writes."""
        path = self.folder / name
        write_json(path, body)
        return path
