"""The main process's side of reading: a work unit as a sequence of :class:`Piece` s.

A piece holds whole records (blocks, lines, ``<doc>`` s, pages, whole bz2 streams, or a batch
of table rows) of about ``ReadOptions.piece_bytes``; the tokenizer workers turn pieces into
documents (:mod:`~data_prep.sources.documents`). Reading here is only I/O, decompression and a
search for record boundaries, all in C, so one reader keeps many workers busy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from data_prep.sources.compressed import BLOCK, BZ2_STREAM, StreamCache, sniff
from data_prep.sources.inputs import sniff_kind
from data_prep.sources.plan import COMPRESSION_RATIO, rule_for
from data_prep.sources.rules import Rule, choose_cut
from data_prep.sources.tables import row_batches
from data_prep.sources.units import ReadOptions, WorkUnit


@dataclass
class Piece:
    """Raw input for one worker: ``kind`` is a rule name, ``bz2-pages``, ``rows`` or ``binary``.

    ``offset``: where ``data`` starts in the (decompressed) file, or its first row; ``line``:
    the line number there (0: unknown, the reader seeked into the file). ``head_cut`` /
    ``tail_cut``: the piece starts / ends inside a record (a forced cut).
    """

    kind: str
    source: str
    data: Any
    offset: int = 0
    line: int = 0
    head_cut: bool = False
    tail_cut: bool = False

    @property
    def nbytes(self) -> int:
        if isinstance(self.data, bytes):
            return len(self.data)
        return sum(len(v) for v in self.data if isinstance(v, str))


def stream_pieces(
    fh: IO[bytes],
    span: tuple[int, int],
    rule: Rule,
    opts: ReadOptions,
    source: str,
    line: int,
    cuts: tuple[bool, bool] = (False, False),
) -> Iterator[Piece]:
    """Pieces of ``fh`` (positioned at ``span[0]``) up to ``span[1]`` (< 0: the end)."""
    start, end = span
    head_cut, tail_cut_at_end = cuts
    target = min(opts.piece_bytes, opts.max_doc_bytes)
    want = target + BLOCK
    remaining = end - start if end >= 0 else -1
    buf, pos, eof = b"", start, False
    while True:
        parts = [buf]
        have = len(buf)
        while have < want and not eof:
            n = want - have if remaining < 0 else min(want - have, remaining)
            chunk = fh.read(n) if n else b""
            if not chunk:
                eof = True
                break
            remaining -= len(chunk) if remaining >= 0 else 0
            parts.append(chunk)
            have += len(chunk)
        buf = b"".join(parts)
        if not buf:
            return
        cut, forced, need = choose_cut(buf, target, rule, opts.max_doc_bytes, eof)
        if cut < 0:
            want = need
            continue
        data, buf = buf[:cut], buf[cut:]
        last = eof and not buf
        yield Piece(
            rule.name, source, data, pos, line, head_cut, forced or (last and tail_cut_at_end)
        )
        head_cut = forced
        pos += cut
        if line:
            line += data.count(b"\n")
        if last:
            return
        want = target + BLOCK


class UnitReader:
    """Reads units into pieces; keeps the last decompressing stream open between units."""

    def __init__(self, opts: ReadOptions) -> None:
        self.opts = opts
        self.cache = StreamCache()

    def close(self) -> None:
        self.cache.close()

    def pieces(self, unit: WorkUnit) -> Iterator[Piece]:
        if unit.kind == "group":
            for path, kind, compression, docs in unit.members:
                yield from self._file(path, kind, compression, docs, (0, -1), (False, False))
        elif unit.kind == "mwdump":
            yield from self._dump(unit)
        elif unit.kind in ("parquet", "arrow", "hf", "hf-stream"):
            yield from self._rows(unit)
        else:
            span, cuts = (unit.start, unit.end), (unit.cut_start, unit.cut_end)
            yield from self._file(unit.source, unit.kind, unit.compression, unit.docs, span, cuts)

    def _file(
        self,
        path: str,
        kind: str,
        compression: str,
        docs: str,
        span: tuple[int, int],
        cuts: tuple[bool, bool],
    ) -> Iterator[Piece]:
        if kind == "binary":
            evidence = sniff_kind(sniff(path, compression))[1]
            yield Piece("binary", path, b"", evidence)
            return
        if kind == "parquet":
            yield from self._rows(WorkUnit(0, path, kind, compression, 0, -1))
            return
        rule = rule_for(kind, docs, self.opts.txt_docs)
        if not compression:
            with open(path, "rb") as fh:
                fh.seek(span[0])
                yield from stream_pieces(fh, span, rule, self.opts, path, int(span[0] == 0), cuts)
            return
        zfh, line = self.cache.open_at(path, compression, span[0])
        consumed = lines = 0
        try:
            for piece in stream_pieces(zfh, span, rule, self.opts, path, line, cuts):
                consumed += len(piece.data)
                lines += piece.data.count(b"\n")
                yield piece
        except BaseException:  # the stream's position is unknown now
            self.cache.close()
            raise
        self.cache.advance(consumed, lines)

    def _dump(self, unit: WorkUnit) -> Iterator[Piece]:
        """Whole bz2 streams, about piece_bytes / COMPRESSION_RATIO compressed bytes a piece."""
        target = max(1, self.opts.piece_bytes // COMPRESSION_RATIO)
        with open(unit.source, "rb") as fh:
            fh.seek(unit.start)
            pos, buf = unit.start, b""
            while pos < unit.end:
                searched = target
                m = None
                while True:
                    m = BZ2_STREAM.search(buf, searched) if len(buf) > searched else None
                    if m or pos + len(buf) >= unit.end:
                        break
                    searched = max(target, len(buf) - 9)
                    buf += fh.read(min(BLOCK, unit.end - pos - len(buf)))
                cut = m.start() if m else len(buf)
                yield Piece("bz2-pages", unit.source, buf[:cut], pos)
                buf, pos = buf[cut:], pos + cut

    def _rows(self, unit: WorkUnit) -> Iterator[Piece]:
        source = unit.source if unit.kind != "hf-stream" else f"{unit.source}#shard{unit.start}"
        values: list[Any] = []
        first, size = 0, 0
        for row, batch in row_batches(unit, self.opts.text_field, self.opts.hf_split):
            if not values:
                first = row
            values += batch
            size += sum(len(v) for v in batch if isinstance(v, str))
            if size >= self.opts.piece_bytes:
                yield Piece("rows", source, values, first)
                values, size = [], 0
        if values:
            yield Piece("rows", source, values, first)


def unit_input_bytes(unit: WorkUnit) -> int:
    """About how many bytes of text a unit holds (for progress); 0 where unknown."""
    if unit.kind in ("arrow", "hf", "hf-stream"):
        return 0
    if unit.kind == "group":
        return sum(_file_bytes(p, c) for p, _, c, _ in unit.members)
    if unit.end >= 0 and unit.kind != "parquet":
        return unit.end - unit.start
    return _file_bytes(unit.source, unit.compression)


def _file_bytes(path: str, compression: str) -> int:
    return os.path.getsize(path) * (COMPRESSION_RATIO if compression else 1)
