"""The ``--data`` entries of a run: one DATA_DIR, or several ``WEIGHT:DIR`` to blend by weight.

Parsing only (no files are read here): :class:`pipeline.data.corpus.Corpus` opens the folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import UserError


@dataclass(frozen=True)
class Source:
    path: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        return Path(self.path).name or self.path


_WEIGHTED = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?:(.+)$")


def parse_sources(entries: list[str], need_weights: bool = True) -> tuple[Source, ...]:
    """``DIR`` (one source) or ``WEIGHT:DIR`` entries: every one weighted for a training blend
    (``need_weights``); the teacher cache and evaluation take the folders alone."""
    sources = []
    for entry in entries:
        match = _WEIGHTED.match(entry)
        if match is None:
            sources.append(Source(entry))
            continue
        weight = float(entry[: entry.index(":")])
        if weight <= 0:
            raise UserError(f"--data {entry}: a blend weight must be positive")
        sources.append(Source(match.group(2), weight))
    unweighted = [e for e in entries if _WEIGHTED.match(e) is None]
    if need_weights and len(entries) > 1 and unweighted:
        raise UserError(
            f"--data: blending {len(entries)} folders needs a weight for each, as WEIGHT:DIR "
            f"(e.g. 0.5:{unweighted[0]})"
        )
    return tuple(sources)
