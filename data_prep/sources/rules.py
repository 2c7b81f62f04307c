"""Record boundaries in a byte stream, and where to cut it into bounded pieces.

A *rule* says where one record (a document, a JSON line, a WikiExtractor ``<doc>``, a MediaWiki
``<page>``) may end: right after a blank line (``blank``), after any newline (``line``,
``jsonl``), after a ``</doc>`` line or before a ``<doc ...>`` line (``wikiextractor``), after a
``</page>`` line (``page``), or nowhere inside a file (``file``).

:func:`choose_cut` is the one decision every cutter uses, the unit planner and the reader that
hands pieces to the tokenizer workers alike: cut at the first natural boundary after the target
size, unless the record there would grow past ``max_record`` bytes; then cut at the last newline
before that bound (a *forced* cut, counted as a cut document), or, in a line longer than the
bound, after its last space, or at a UTF-8 character boundary. Memory therefore never depends on the length of a document
or a line, only on the settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A record that must be parsed whole (a MediaWiki page: at most 2 MiB of wikitext, XML escaping
# can double it; a JSON line) is never cut below this bound, whatever --max-doc-mb says: a cut
# page or line cannot be parsed. The document inside is then cut to --max-doc-mb as any other.
WHOLE_RECORD_MAX = 64 << 20
BLOCK = 1 << 20  # more bytes to read when a cut cannot be decided yet


@dataclass(frozen=True)
class Rule:
    """Where records of one layout end. ``pattern``: a match ends at a boundary."""

    name: str
    pattern: re.Pattern[bytes] | None
    max_record: int = 0  # 0: the caller's max_doc bound

    def find(self, buf: bytes, pos: int, endpos: int) -> int:
        """The first boundary of a match starting at or after ``pos`` and ending by ``endpos``."""
        if self.pattern is None:
            return -1
        if self.name in ("line", "jsonl"):
            i = buf.find(b"\n", pos, endpos)
            return i + 1 if i >= 0 else -1
        m = self.pattern.search(buf, pos, endpos)
        return m.end() if m else -1

    def last(self, buf: bytes, lo: int, hi: int) -> int:
        """The last boundary in ``[lo, hi]`` (of matches starting at or after ``lo``), or -1."""
        if self.pattern is None:
            return -1
        if self.name in ("line", "jsonl"):
            i = buf.rfind(b"\n", lo, hi)
            return i + 1 if i >= 0 else -1
        end = -1
        for m in self.pattern.finditer(buf, lo, hi):
            end = m.end()
        return end


_BLANK = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
RULES = {
    "blank": Rule("blank", _BLANK),
    "line": Rule("line", re.compile(rb"\n")),
    "jsonl": Rule("jsonl", re.compile(rb"\n"), WHOLE_RECORD_MAX),
    "file": Rule("file", None),
    "wikiextractor": Rule("wikiextractor", re.compile(rb"\n</doc>[ \t\r]*\n|\n(?=<doc[ >])")),
    "page": Rule("page", re.compile(rb"</page>[ \t\r]*\n"), WHOLE_RECORD_MAX),
}
TXT_DOCS = ("blank", "line", "file")


def utf8_cut(buf: bytes, pos: int, floor: int) -> int:
    """``pos`` moved back (at most 3 bytes, not below ``floor``) off UTF-8 continuation bytes."""
    i = pos
    while i > floor and i > pos - 3 and i < len(buf) and 0x80 <= buf[i] < 0xC0:
        i -= 1
    return i if i > floor else pos


def choose_cut(
    buf: bytes, target: int, rule: Rule, max_doc: int, eof: bool
) -> tuple[int, bool, int]:
    """Where to end the piece that starts at ``buf[0]``: ``(cut, forced, 0)``, or ``(-1, False,
    need)`` when ``need`` bytes must be read before deciding (``eof``: ``buf`` is all there is).

    ``buf[0]`` is a record start or the start of a search window. The record that contains
    ``target`` starts at its last boundary ``d`` within ``max_doc`` bytes before it; the cut is
    the first boundary after ``target`` if it comes within the rule's record bound (--max-doc-mb,
    or WHOLE_RECORD_MAX) of ``d``; else a forced cut after the last newline (else space) before
    that bound. The decision depends on the bytes only, never on how they were read.
    """
    n = len(buf)
    if n <= target:
        return (n, False, 0) if eof else (-1, False, target + BLOCK)
    lo = max(0, target - max_doc)
    d = rule.last(buf, lo, target)
    if d < 0:
        d = lo
    bound = d + (rule.max_record or max_doc)
    b = rule.find(buf, target, min(n, bound))
    if b >= 0:
        return b, False, 0
    if n <= bound:
        return (n, False, 0) if eof else (-1, False, min(max(2 * n, n + BLOCK), bound + 1))
    for sep in (b"\n", b" "):  # a line boundary, else (one huge line) a word boundary
        i = buf.rfind(sep, d, bound)
        if i >= 0:
            return i + 1, True, 0
    return utf8_cut(buf, bound, d), True, 0
