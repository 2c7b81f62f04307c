"""Cut the inputs into work units of about ``unit_bytes`` each.

- Small files (up to the unit size; a compressed file counts COMPRESSION_RATIO times its size)
  are grouped, in order, into ``group`` units up to the unit size, so the number of shards
  follows the corpus size, not the file count.
- A large text file is cut at record boundaries (:mod:`~data_prep.sources.rules`) every unit
  size: by seeking when it is uncompressed, by one decompressing pass when it is compressed
  (the cuts are decompressed offsets; each unit's reader skips ahead to its start).
- A multistream bz2 dump is cut at bz2 stream starts: from its index when it lies beside the
  dump, else found by their magic bytes; the unit size counts compressed bytes there, about
  the amount of article text they give.
- A parquet file is cut at row groups; ``save_to_disk`` folders and ``hf:`` datasets by rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

from data_prep.sources.compressed import (
    ForwardWindow,
    check_stream_starts,
    dump_index_path,
    next_stream_start,
    open_binary,
    read_dump_index,
)
from data_prep.sources.inputs import TEXT_KINDS, Input, expand_inputs
from data_prep.sources.rules import BLOCK, RULES, Rule, choose_cut
from data_prep.sources.tables import dataset_rows, hf_stream_shards, parquet_row_groups
from data_prep.sources.units import WorkUnit

COMPRESSION_RATIO = 4  # text shrinks about 4x in gzip / zstd / bz2
KIND_RULES = {"jsonl": "jsonl", "wikiextractor": "wikiextractor", "mediawiki": "page"}


def rule_for(kind: str, docs: str, txt_docs: str) -> Rule:
    """The record rule of a text input: its own (HF text files: line), or --txt-docs for .txt."""
    return RULES[docs or (txt_docs if kind == "txt" else KIND_RULES[kind])]


def unit_ranges(
    read_at: Callable[[int, int], bytes], unit_bytes: int, rule: Rule, max_doc: int
) -> Iterator[tuple[int, int, bool]]:
    """(start, end, forced) of the units of one stream: each ends at the first record boundary
    after ``start + unit_bytes`` (see :func:`~data_prep.sources.rules.choose_cut`)."""
    start = 0
    while True:
        target = start + unit_bytes
        lo = max(start, target - max_doc)
        want = target - lo + BLOCK
        while True:
            window = read_at(lo, want)
            eof = len(window) < want
            cut, forced, need = choose_cut(window, target - lo, rule, max_doc, eof)
            if cut >= 0:
                break
            want = need
        yield start, lo + cut, forced
        if eof and cut == len(window):
            return
        start = lo + cut


def _seek_reader(fh: IO[bytes]) -> Callable[[int, int], bytes]:
    def read_at(offset: int, n: int) -> bytes:
        fh.seek(offset)
        return fh.read(n)

    return read_at


class Planner:
    """Accumulates units input by input (``add``), grouping small files (``flush``)."""

    def __init__(
        self,
        unit_bytes: int,
        unit_rows: int,
        txt_docs: str,
        max_doc_bytes: int,
        unit_max_files: int,
        hf_split: str,
        hf_streaming: bool,
    ) -> None:
        self.unit_bytes, self.unit_rows = unit_bytes, unit_rows
        self.txt_docs, self.max_doc = txt_docs, max_doc_bytes
        self.max_files = unit_max_files
        self.hf_split, self.hf_streaming = hf_split, hf_streaming
        self.units: list[WorkUnit] = []
        self.group: list[Input] = []
        self.group_bytes = 0

    def unit(
        self, inp: Input, kind: str, start: int, end: int, cuts: tuple[bool, bool] = (False, False)
    ) -> None:
        index = len(self.units)
        comp, docs = inp.compression, inp.docs
        self.units.append(WorkUnit(index, inp.path, kind, comp, start, end, docs, *cuts))

    def add(self, inp: Input) -> None:
        if inp.kind in ("arrow", "hf"):
            self.flush()
            self._row_units(inp)
            return
        estimate = inp.size * (COMPRESSION_RATIO if inp.compression else 1)
        if inp.kind == "binary":
            estimate = 0  # only its first bytes are read
        elif inp.kind == "mediawiki" and inp.compression == "bz2" and self._dump_units(inp):
            return
        elif inp.kind == "parquet" and not inp.compression:
            groups, estimate = parquet_row_groups(inp.path, self.unit_bytes)
            if len(groups) > 1:
                self.flush()
                for a, b in groups:
                    self.unit(inp, "parquet", a, b)
                return
        if inp.kind in TEXT_KINDS and estimate > self.unit_bytes:
            self.flush()
            self._text_units(inp)
            return
        full = self.group and self.group_bytes + estimate > self.unit_bytes
        if full or (self.max_files and len(self.group) >= self.max_files):
            self.flush()
        self.group.append(inp)
        self.group_bytes += estimate

    def flush(self) -> None:
        if len(self.group) == 1:
            self.unit(self.group[0], self.group[0].kind, 0, -1)
        elif self.group:
            first = self.group[0]
            members = tuple((i.path, i.kind, i.compression, i.docs) for i in self.group)
            self.units.append(
                WorkUnit(len(self.units), first.path, "group", "", 0, -1, members=members)
            )
        self.group, self.group_bytes = [], 0

    def _text_units(self, inp: Input) -> None:
        rule = rule_for(inp.kind, inp.docs, self.txt_docs)
        with open_binary(inp.path, inp.compression) as fh:
            read_at = ForwardWindow(fh).read_at if inp.compression else _seek_reader(fh)
            cut_start = False
            for start, end, forced in unit_ranges(read_at, self.unit_bytes, rule, self.max_doc):
                self.unit(inp, inp.kind, start, end, (cut_start, forced))
                cut_start = forced

    def _dump_units(self, inp: Input) -> bool:
        """Units of whole bz2 streams; False when the file is not a multistream dump."""
        size = inp.size
        index = dump_index_path(inp.path)
        cuts: list[int] = []
        if index is not None:
            pos = 0
            for offset in sorted(read_dump_index(index)):
                if offset - pos >= self.unit_bytes:
                    cuts.append(offset)
                    pos = offset
            check_stream_starts(inp.path, cuts)
        else:
            if next_stream_start(inp.path, 1, min(size, 16 << 20)) >= min(size, 16 << 20):
                return False  # one stream (or the header stream is huge): read it as a stream
            pos = 0
            while pos + self.unit_bytes < size:
                pos = next_stream_start(inp.path, pos + self.unit_bytes, size)
                if pos >= size:
                    break
                cuts.append(pos)
        self.flush()
        for a, b in zip([0, *cuts], [*cuts, size]):
            self.unit(inp, "mwdump", a, b)
        return True

    def _row_units(self, inp: Input) -> None:
        if inp.kind == "hf" and self.hf_streaming:
            n = hf_stream_shards(inp.path, self.hf_split)
            for i in range(n):
                self.unit(inp, "hf-stream", i, n)
            return
        n = dataset_rows(inp.path, inp.kind, self.hf_split)
        for start in range(0, max(n, 1), self.unit_rows):
            self.unit(inp, inp.kind, start, min(start + self.unit_rows, n))


def plan_units(
    specs: list[str],
    unit_bytes: int,
    unit_rows: int,
    hf_split: str = "train",
    hf_streaming: bool = False,
    txt_docs: str = "blank",
    max_doc_bytes: int = 4 << 20,
    unit_max_files: int = 0,
) -> list[WorkUnit]:
    """Cut the corpus into work units (deterministic given the inputs and these settings)."""
    planner = Planner(
        unit_bytes, unit_rows, txt_docs, max_doc_bytes, unit_max_files, hf_split, hf_streaming
    )
    for inp in expand_inputs(specs, hf_split, hf_streaming):
        planner.add(inp)
    planner.flush()
    return planner.units
