"""The workers' side of reading: the documents of one :class:`~data_prep.sources.reader.Piece`.

Document rules: ``blank`` (blocks of non-blank lines; a blank line holds only ASCII whitespace),
``line`` (every non-blank line), ``file`` (the whole file; a line that is not UTF-8 is dropped and
counted), ``jsonl`` (field ``--text-field`` of each line), ``wikiextractor`` (the body of each
``<doc ...>`` ... ``</doc>`` block, less the title line WikiExtractor repeats, HTML entities
decoded), MediaWiki pages (:mod:`~data_prep.sources.wiki`) and table rows. Every document is
stripped; one longer than ``max_doc_bytes`` characters is cut at line boundaries (or spaces, in
a longer line) into pieces of at most that length, and the cuts are counted.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterator

from data_prep.sources.reader import Piece
from data_prep.sources.units import DocStats, ReadOptions
from data_prep.sources.wiki import stream_documents, wikitext_to_text, xml_documents

NL = b"\n"
_BLANK_SEP = re.compile(rb"\n(?:[ \t\r\x0b\x0c]*\n)+")
_DOC_OPEN = re.compile(rb"<doc[ >]")
_DOC_TITLE = re.compile(rb'\stitle="(.*)">\s*$')


def where(piece: Piece, pos: int) -> str:
    """The location of byte ``pos`` of a piece (row ``pos`` of a rows piece), for the log."""
    if piece.kind == "rows":
        return f"{piece.source}:row {piece.offset + pos + 1}"
    if piece.line:
        return f"{piece.source}:{piece.line + piece.data.count(NL, 0, pos)}"
    return f"{piece.source}:byte {piece.offset + pos}"


def _decode(raw: bytes, piece: Piece, pos: int, stats: DocStats) -> str | None:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        stats.bad.add("undecodable", where(piece, pos))
        return None
    if not text:
        stats.bad.add("empty", where(piece, pos))
        return None
    return text


def _blank_docs(piece: Piece, stats: DocStats) -> Iterator[str]:
    data, prev = piece.data, 0
    for m in [*_BLANK_SEP.finditer(data), None]:
        a, b = prev, m.start() if m else len(data)
        prev = m.end() if m else len(data)
        block = data[a:b]
        if block.strip():
            text = _decode(block, piece, a + len(block) - len(block.lstrip()), stats)
            if text is not None:
                yield text


def _decoded_lines(piece: Piece, stats: DocStats) -> Iterator[str]:
    """The lines of a piece as text; a line that is not UTF-8 is counted and left out."""
    try:
        yield from piece.data.decode("utf-8").split("\n")
        return
    except UnicodeDecodeError:
        pass
    pos = 0
    for raw in piece.data.split(b"\n"):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            stats.bad.add("undecodable", where(piece, pos))
        pos += len(raw) + 1


def _line_docs(piece: Piece, stats: DocStats) -> Iterator[str]:
    for line in _decoded_lines(piece, stats):
        text = line.strip()
        if text:
            yield text


def _file_doc(piece: Piece, stats: DocStats) -> Iterator[str]:
    text = "\n".join(_decoded_lines(piece, stats)).strip()
    if text:
        yield text


def _jsonl_docs(piece: Piece, field: str, stats: DocStats) -> Iterator[str]:
    pos = 0
    for line in piece.data.split(b"\n"):
        here, pos = pos, pos + len(line) + 1
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except UnicodeDecodeError:
            stats.bad.add("undecodable", where(piece, here))
            continue
        except ValueError:
            stats.bad.add("malformed_json", where(piece, here))
            continue
        value = obj.get(field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            stats.bad.add("missing_field", where(piece, here))
        elif not value.strip():
            stats.bad.add("empty", where(piece, here))
        else:
            yield value.strip()


def _wikiextractor_body(
    lines: list[bytes], title: bytes | None, pos: int, piece: Piece, stats: DocStats
) -> str | None:
    body = b"\n".join(lines).strip()
    if title is not None and body.split(b"\n", 1)[0].strip() == title.strip():
        body = body[len(body.split(b"\n", 1)[0]) :].strip()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        stats.bad.add("undecodable", where(piece, pos))
        return None
    text = html.unescape(text).strip() if "&" in text else text
    if not text:
        stats.skip("empty_article")
        return None
    return text


def _wikiextractor_docs(piece: Piece, stats: DocStats) -> Iterator[str]:
    """``<doc>`` blocks; an unclosed one (a new ``<doc`` or the end comes first) is bad input,
    as is text outside any block (counted once per run of lines)."""
    inside, title, start = piece.head_cut, None, 0
    lines: list[bytes] = []
    outside = False
    pos = 0
    for line in piece.data.split(b"\n"):
        here, pos = pos, pos + len(line) + 1
        if _DOC_OPEN.match(line):
            if inside:
                stats.bad.add("unclosed_doc", where(piece, start))
            m = _DOC_TITLE.search(line)
            inside, lines, title, start, outside = True, [], m.group(1) if m else None, here, False
        elif line.rstrip() == b"</doc>" and inside:
            inside = False
            text = _wikiextractor_body(lines, title, start, piece, stats)
            if text is not None:
                yield text
        elif inside:
            lines.append(line)
        elif line.strip() and not outside:
            stats.bad.add("text_outside_doc", where(piece, here))
            outside = True
    if inside and piece.tail_cut:
        text = _wikiextractor_body(lines, title, start, piece, stats)
        if text is not None:
            yield text
    elif inside:
        stats.bad.add("unclosed_doc", where(piece, start))


def _row_docs(piece: Piece, stats: DocStats) -> Iterator[str]:
    for i, value in enumerate(piece.data):
        if not isinstance(value, str):
            stats.bad.add("missing_field", where(piece, i))
        elif not value.strip():
            stats.bad.add("empty", where(piece, i))
        else:
            yield value.strip()


def _raw_documents(
    piece: Piece, opts: ReadOptions, stats: DocStats, clean: Callable[[str], str]
) -> Iterator[str]:
    kind = piece.kind
    if kind == "blank":
        return _blank_docs(piece, stats)
    if kind == "line":
        return _line_docs(piece, stats)
    if kind == "file":
        return _file_doc(piece, stats)
    if kind == "jsonl":
        return _jsonl_docs(piece, opts.text_field, stats)
    if kind == "wikiextractor":
        return _wikiextractor_docs(piece, stats)
    if kind == "page":
        return xml_documents(piece.data, lambda p: where(piece, p), stats, piece.tail_cut, clean)
    if kind == "bz2-pages":
        return stream_documents(piece.data, piece.source, piece.offset, stats, clean)
    if kind == "rows":
        return _row_docs(piece, stats)
    if kind == "binary":
        stats.bad.add("binary", f"{piece.source}:byte {piece.offset}")
        return iter(())
    raise ValueError(f"unknown piece kind {kind}")


def cut_text(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after a newline (else a space)."""
    out: list[str] = []
    start = 0
    while len(text) - start > limit:
        end = text.rfind("\n", start + 1, start + limit + 1)  # the piece ends before it
        if end < 0:
            end = text.rfind(" ", start + 1, start + limit + 1)
        part = text[start : end if end >= 0 else start + limit].strip()
        if part:
            out.append(part)
        start = end + 1 if end >= 0 else start + limit
    part = text[start:].strip()
    if part:
        out.append(part)
    return out


def piece_documents(
    piece: Piece, opts: ReadOptions, stats: DocStats, clean: Callable[[str], str] = wikitext_to_text
) -> Iterator[str]:
    """The documents of a piece, in order, none longer than ``opts.max_doc_bytes`` characters."""
    for text in _raw_documents(piece, opts, stats, clean):
        if len(text) > opts.max_doc_bytes:
            parts = cut_text(text, opts.max_doc_bytes)
            stats.cuts += max(0, len(parts) - 1)
            yield from parts
        else:
            yield text
