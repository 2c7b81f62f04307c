"""Corpus sources: turn ``--input`` specs into work units and work units into documents.

Specs: files or globs of ``.txt`` (one document per blank-line-separated block), ``.jsonl`` /
``.json`` (one document per line, field ``--text-field``), ``.parquet``, each optionally ``.gz`` or
``.zst``; a folder written by ``datasets.Dataset.save_to_disk``; ``hf:NAME[:CONFIG]`` loaded with
``datasets.load_dataset`` (a hub name or a local folder of data files).

A *work unit* is the piece of the corpus one task turns into shards: a whole file, a byte range of
a large uncompressed text file (cut right after a blank line, or after a newline for jsonl, so no
document is split), or a row range of a dataset. Units depend only on the inputs and the unit
size, never on the number of workers or array tasks, so every way of running the job writes the
same shards.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from data_prep.errors import UserError

TEXT_SUFFIXES = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
COMPRESSION_SUFFIXES = (".gz", ".zst")
MAX_LOCATIONS = 5


@dataclass(frozen=True)
class WorkUnit:
    """A deterministic piece of the corpus. ``start``/``end``: bytes for files, rows for datasets."""

    index: int
    source: str
    kind: str  # txt | jsonl | parquet | arrow | hf | hf-stream
    compression: str  # "" | gz | zst
    start: int
    end: int

    def describe(self) -> str:
        whole = self.start == 0 and self.end < 0
        return self.source if whole else f"{self.source}[{self.start}:{self.end}]"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BadInput:
    """Counts of skipped documents by reason, with the first few locations of each."""

    counts: dict[str, int] = field(default_factory=dict)
    locations: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, location: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
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


def _split_suffix(path: str) -> tuple[str, str]:
    """(kind, compression) of a file path, or raise UserError for an unknown type."""
    lower = path.lower()
    compression = ""
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            compression = suffix[1:]
            lower = lower[: -len(suffix)]
    ext = os.path.splitext(lower)[1]
    if ext in TEXT_SUFFIXES:
        return TEXT_SUFFIXES[ext], compression
    if ext == ".parquet":
        return "parquet", compression
    raise UserError(
        f"{path}: unknown input type {ext or '(no suffix)'}; use .txt, .jsonl, .json or .parquet "
        "(optionally .gz or .zst), a datasets save_to_disk folder, or hf:NAME[:CONFIG]"
    )


def expand_inputs(specs: list[str]) -> list[tuple[str, str, str]]:
    """Resolve specs into (source, kind, compression) triples, in the order given."""
    out: list[tuple[str, str, str]] = []
    for spec in specs:
        if spec.startswith("hf:"):
            out.append((spec, "hf", ""))
            continue
        if any(ch in spec for ch in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise UserError(f"{spec}: no file matches this pattern")
        else:
            if not os.path.exists(spec):
                raise UserError(f"{spec}: no such file or folder")
            matches = [spec]
        for path in matches:
            if os.path.isdir(path):
                if os.path.exists(os.path.join(path, "state.json")) or os.path.exists(
                    os.path.join(path, "dataset_dict.json")
                ):
                    out.append((path, "arrow", ""))
                    continue
                raise UserError(
                    f"{path}: a folder that is not a datasets save_to_disk folder; pass its files "
                    f"(e.g. '{path}/*.txt') or use hf:{path} to load it with datasets.load_dataset"
                )
            if not os.access(path, os.R_OK):
                raise UserError(f"{path}: not readable")
            kind, compression = _split_suffix(path)
            out.append((path, kind, compression))
    if not out:
        raise UserError("no input given; pass --input FILE_OR_GLOB ...")
    return out


def _next_boundary(path: str, pos: int, kind: str) -> int:
    """First offset at or after ``pos`` where a unit may start (after a blank line / a newline)."""
    with open(path, "rb") as fh:
        fh.seek(pos)
        fh.readline()  # the rest of the line ``pos`` falls in
        if kind == "jsonl":
            return fh.tell()
        while True:
            line = fh.readline()
            if not line:
                return fh.tell()
            if not line.strip():
                return fh.tell()


def plan_units(
    specs: list[str],
    unit_bytes: int,
    unit_rows: int,
    hf_split: str = "train",
    hf_streaming: bool = False,
) -> list[WorkUnit]:
    """Cut the corpus into work units (deterministic given the inputs and unit sizes)."""
    units: list[WorkUnit] = []

    def add(source: str, kind: str, compression: str, start: int, end: int) -> None:
        units.append(WorkUnit(len(units), source, kind, compression, start, end))

    for source, kind, compression in expand_inputs(specs):
        if kind in ("txt", "jsonl") and not compression:
            size = os.path.getsize(source)
            start = 0
            while start < size:
                end = (
                    size
                    if size - start <= unit_bytes
                    else _next_boundary(source, start + unit_bytes, kind)
                )
                add(source, kind, compression, start, end)
                start = end
            if size == 0:
                add(source, kind, compression, 0, 0)
        elif kind in ("txt", "jsonl", "parquet"):
            add(source, kind, compression, 0, -1)
        elif kind == "arrow":
            n = len(_load_arrow(source, hf_split))
            for start in range(0, max(n, 1), unit_rows):
                add(source, kind, "", start, min(start + unit_rows, n))
        elif hf_streaming:
            n_shards = _load_hf(source, hf_split, streaming=True).num_shards
            for i in range(n_shards):
                add(source, "hf-stream", "", i, n_shards)
        else:
            n = len(_load_hf(source, hf_split, streaming=False))
            for start in range(0, max(n, 1), unit_rows):
                add(source, kind, "", start, min(start + unit_rows, n))
    return units


def _load_arrow(path: str, split: str) -> Any:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path}: no split '{split}' (has {', '.join(ds)}); pass --hf-split")
        ds = ds[split]
    return ds


def _load_hf(spec: str, split: str, streaming: bool) -> Any:
    import datasets

    name, _, config = spec[3:].partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split, streaming=streaming)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{spec}: datasets.load_dataset failed ({first}); check the name/config, the network "
            "or HF_DATASETS_OFFLINE and the cache"
        ) from None


def _open_binary(path: str, compression: str) -> IO[bytes]:
    if compression == "gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == "zst":
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - owned by the returned reader
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _lines(unit: WorkUnit) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a file unit; numbers count from the unit's first line."""
    with _open_binary(unit.source, unit.compression) as fh:
        if unit.start:
            fh.seek(unit.start)
        pos = unit.start
        for lineno, line in enumerate(fh, 1):
            if 0 <= unit.end <= pos:
                break
            pos += len(line)
            yield lineno, line


def _location(unit: WorkUnit, lineno: int) -> str:
    if unit.start == 0:
        return f"{unit.source}:{lineno}"
    return f"{unit.source}:+{lineno} (lines after byte {unit.start})"


def _decode(raw: bytes, unit: WorkUnit, lineno: int, bad: BadInput) -> str | None:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        bad.add("undecodable", _location(unit, lineno))
        return None
    if not text:
        bad.add("empty", _location(unit, lineno))
        return None
    return text


def _txt_documents(unit: WorkUnit, bad: BadInput) -> Iterator[str]:
    block: list[bytes] = []
    first = 0
    for lineno, line in _lines(unit):
        if line.strip():
            if not block:
                first = lineno
            block.append(line)
        elif block:
            text = _decode(b"".join(block), unit, first, bad)
            block = []
            if text is not None:
                yield text
    if block:
        text = _decode(b"".join(block), unit, first, bad)
        if text is not None:
            yield text


def _jsonl_documents(unit: WorkUnit, text_field: str, bad: BadInput) -> Iterator[str]:
    for lineno, line in _lines(unit):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except UnicodeDecodeError:
            bad.add("undecodable", _location(unit, lineno))
            continue
        except ValueError:
            bad.add("malformed_json", _location(unit, lineno))
            continue
        value = obj.get(text_field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            bad.add("missing_field", _location(unit, lineno))
            continue
        value = value.strip()
        if not value:
            bad.add("empty", _location(unit, lineno))
            continue
        yield value


def _column_documents(
    batches: Iterator[list[Any]], source: str, first_row: int, bad: BadInput
) -> Iterator[str]:
    row = first_row
    for values in batches:
        for value in values:
            row += 1
            if not isinstance(value, str):
                bad.add("missing_field", f"{source}:row {row}")
            elif not value.strip():
                bad.add("empty", f"{source}:row {row}")
            else:
                yield value.strip()


def _parquet_documents(unit: WorkUnit, text_field: str, bad: BadInput) -> Iterator[str]:
    import pyarrow.parquet as pq

    if unit.compression:
        with _open_binary(unit.source, unit.compression) as fh:
            handle: Any = io.BytesIO(fh.read())
    else:
        handle = unit.source
    try:
        pf = pq.ParquetFile(handle)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"{unit.source}: not a readable parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise UserError(
            f"{unit.source}: no column '{text_field}' (has {', '.join(names)}); pass --text-field"
        )
    batches = (
        b.column(0).to_pylist() for b in pf.iter_batches(batch_size=1024, columns=[text_field])
    )
    yield from _column_documents(batches, unit.source, 0, bad)


def _dataset_documents(ds: Any, unit: WorkUnit, text_field: str, bad: BadInput) -> Iterator[str]:
    if text_field not in ds.column_names:
        raise UserError(
            f"{unit.source}: no column '{text_field}' (has {', '.join(ds.column_names)}); "
            "pass --text-field"
        )
    part = ds.select_columns([text_field]).select(range(unit.start, unit.end))
    batches = (batch[text_field] for batch in part.iter(batch_size=1024))
    yield from _column_documents(batches, unit.source, unit.start, bad)


def iter_documents(
    unit: WorkUnit, text_field: str, bad: BadInput, hf_split: str = "train"
) -> Iterator[str]:
    """The documents of one unit, in order; skipped ones are recorded in ``bad``."""
    if unit.kind == "txt":
        yield from _txt_documents(unit, bad)
    elif unit.kind == "jsonl":
        yield from _jsonl_documents(unit, text_field, bad)
    elif unit.kind == "parquet":
        yield from _parquet_documents(unit, text_field, bad)
    elif unit.kind == "arrow":
        yield from _dataset_documents(_load_arrow(unit.source, hf_split), unit, text_field, bad)
    elif unit.kind == "hf":
        yield from _dataset_documents(_load_hf(unit.source, hf_split, False), unit, text_field, bad)
    elif unit.kind == "hf-stream":
        ds = _load_hf(unit.source, hf_split, True).shard(num_shards=unit.end, index=unit.start)
        batches = ([ex.get(text_field)] for ex in ds)
        yield from _column_documents(batches, f"{unit.source}#shard{unit.start}", 0, bad)
    else:
        raise ValueError(f"unknown unit kind {unit.kind}")


def unit_input_bytes(unit: WorkUnit) -> int:
    """Bytes of input a unit covers (for progress); 0 where unknown."""
    if unit.kind in ("txt", "jsonl", "parquet"):
        if unit.end >= 0:
            return unit.end - unit.start
        return Path(unit.source).stat().st_size
    return 0
