"""Named points where a fault campaign can kill this process, exactly there.

``DISTIL_FAILPOINT=NAME[@RANK][#N]`` makes the N-th time (default the first) rank RANK (default
any) reaches :func:`failpoint` ``NAME`` end in SIGKILL: what a node loss, the OOM killer or
``scancel --signal=KILL`` does at that very moment. Unset (always, outside
``python -m pipeline.tools.faults``), a failpoint is one dictionary lookup.

Points: ``step`` (after the forward pass, before the backward), ``save:written`` (every rank's
files on disk, nothing committed), ``save:committed`` (COMMIT.json written, ``latest`` not yet
moved), ``universal:converted`` (the universal checkpoint written, not yet marked done).
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("DISTIL_FAILPOINT")
    if not spec:
        return
    target, _, count = spec.partition("#")
    point, _, rank = target.partition("@")
    if point != name or (rank and rank != os.environ.get("RANK", "0")):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
