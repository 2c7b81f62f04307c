"""Work units, the options that shape reading, and the accounting of skipped, cut and bad input.

A :class:`WorkUnit` is the piece of the corpus one task turns into shards; what ``start`` and
``end`` count depends on its kind (see the package docstring). Units are planned from the inputs
and the settings alone, never from the number of workers or array tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_LOCATIONS = 5


@dataclass(frozen=True)
class WorkUnit:
    """A deterministic piece of the corpus.

    ``start``/``end``: byte offsets (decompressed for .gz/.zst/.bz2) for text kinds, compressed
    offsets of bz2 streams for ``mwdump``, row groups for ``parquet``, rows for datasets;
    ``end`` < 0 is the end of the file. ``docs``: the document rule of a text unit when it is
    not --txt-docs (HF text folders are one row per line). ``cut_start`` / ``cut_end``: the
    unit starts / ends inside a document (a forced cut at a line boundary; the unit that ends
    there counts it). ``members``: the files of a ``group`` unit, as (path, kind, compression,
    docs).
    """

    index: int
    source: str
    kind: str  # txt|jsonl|wikiextractor|mediawiki|mwdump|parquet|arrow|hf|hf-stream|group|binary
    compression: str  # "" | gz | zst | bz2
    start: int
    end: int
    docs: str = ""
    cut_start: bool = False
    cut_end: bool = False
    members: tuple[tuple[str, str, str, str], ...] = ()

    def describe(self) -> str:
        if self.kind == "group":
            return f"{self.source} (+{len(self.members) - 1} more files)"
        whole = self.start == 0 and self.end < 0
        return self.source if whole else f"{self.source}[{self.start}:{self.end}]"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["members"] = [list(m) for m in self.members]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WorkUnit:
        members = tuple(tuple(m) for m in obj.get("members", ()))
        return cls(**{**obj, "members": members})


@dataclass(frozen=True)
class ReadOptions:
    """Settings of reading (shared by the planner, the main reader and the workers)."""

    text_field: str = "text"
    txt_docs: str = "blank"  # blank | line | file
    max_doc_bytes: int = 4 << 20
    piece_bytes: int = 1 << 20  # input per tokenizer task
    hf_split: str = "train"


@dataclass
class BadInput:
    """Counts of skipped documents by reason, with the first few locations of each."""

    counts: dict[str, int] = field(default_factory=dict)
    locations: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, location: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        locs = self.locations.setdefault(reason, [])
        if len(locs) < MAX_LOCATIONS:
            locs.append(location)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: BadInput) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            locs = self.locations.setdefault(reason, [])
            locs.extend(other.locations.get(reason, [])[: MAX_LOCATIONS - len(locs)])

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "locations": {k: list(v) for k, v in self.locations.items()},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BadInput:
        return cls(
            dict(obj.get("counts", {})), {k: list(v) for k, v in obj.get("locations", {}).items()}
        )

    def summary(self) -> str:
        parts = []
        for reason, n in sorted(self.counts.items()):
            locs = ", ".join(self.locations.get(reason, []))
            parts.append(f"{n} {reason} (first at {locs})")
        return "; ".join(parts)


@dataclass
class DocStats:
    """What reading did besides yielding documents: unusable input (``bad``), input skipped on
    purpose (``skipped``: redirects, other namespaces, empty articles) and ``cuts`` (documents
    longer than --max-doc-mb, cut at line boundaries)."""

    bad: BadInput = field(default_factory=BadInput)
    skipped: dict[str, int] = field(default_factory=dict)
    cuts: int = 0

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def merge(self, other: DocStats) -> None:
        self.bad.merge(other.bad)
        for reason, n in other.skipped.items():
            self.skip(reason, n)
        self.cuts += other.cuts
