"""Wikipedia: article text from MediaWiki XML dumps, one document per article.

Pages come from the dump's XML (``<page>`` elements, parsed one at a time with the standard
library's expat parser, so a piece can start at any bz2 stream of a multistream dump: a page
never spans two streams). Only articles are kept: namespace 0 and not a redirect; the rest is
counted in ``skipped``. The wikitext is turned into plain text with mwparserfromhell (MIT, the
parser behind Hugging Face's ``wikipedia`` datasets): templates (infoboxes, citations, navboxes),
references, tables, files, categories, interlanguage links, comments, math and the reference /
link sections at the end are dropped; links keep their label, headings and list items their
text. References, comments, code-like tags, templates and tables are cut out, and links
replaced by their text, before parsing (regexes and a brace count): the parser then builds nodes
for little more than the prose, about 3 times faster than parsing everything, for the same output
on the synthetic articles of data_prep.tools.synth (tests/test_wiki.py checks the rules). Why this library and not ``wikiextractor`` (AGPL, which an Apache-2.0 project cannot
take as a dependency) or ``wikitextparser`` (GPL): see README.md, "Wikipedia".
"""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

from data_prep.sources.compressed import BZ2_STREAM
from data_prep.sources.units import DocStats

PAGES_PER_STREAM = 100  # a broken stream of a multistream dump loses this many pages
MAX_STREAM_BYTES = 256 << 20  # one stream holds 100 pages: more than this is a bomb, not text
_PAGE = re.compile(rb"<page>(.*?)</page>", re.S)
_PAGE_OPEN = re.compile(rb"<page>")
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
# <ref>s hold citations; they never nest, so a regex drops them before parsing (a third of a
# typical article's wikitext, which the parser then never has to build nodes for).
_REF = re.compile(r"<ref(?:\s[^>/]*)?/>|<ref(?:\s[^>]*)?>.*?</ref\s*>", re.S | re.I)
_MAGIC = re.compile(r"__[A-Z]+__")
# Tags dropped whole; gone before braces are counted, as their content may hold braces.
_DROP_CONTENT = re.compile(
    r"<(math|chem|ce|syntaxhighlight|source|pre|code|nowiki|score|timeline|graph|hiero)\b"
    r"[^>]*?(?:/>|>.*?</\1\s*>)",
    re.S | re.I,
)
# Templates and (at the start of a line) tables open and close; the kept inline templates.
_BLOCK_TOKEN = re.compile(r"\{\{|\}\}|^[ \t]*\{\||^[ \t]*\|\}", re.M)
_SIMPLE_LINK = re.compile(r"\[\[([^\[\]\n|]*)(?:\|([^\[\]\n]*))?\]\]")
_INLINE = re.compile(
    r"\{\{\s*(?:convert|lang|lang-[\w-]+|transl|nowrap|nobr|small|smaller|big|em|sic|ill|vr)\s*\|",
    re.I,
)
_MEDIA = re.compile(r"^\s*(?:file|image|media|category)\s*:", re.I)  # ":Category:" is a link
_INTERLANG = re.compile(r"^\s*[a-z]{2,3}(?:-[a-z]+)*\s*:", re.I)
_SPACES = re.compile(r"[ \t\u00a0]+")
_BEFORE_PUNCT = re.compile(r" ([,.;:!?)\]])")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_NO_WORDS = re.compile(r"^[\W_]*$")
DROP_TAGS = frozenset(
    [
        "ref",
        "references",
        "math",
        "chem",
        "ce",
        "gallery",
        "imagemap",
        "timeline",
        "score",
        "syntaxhighlight",
        "source",
        "pre",
        "code",
        "graph",
        "mapframe",
        "maplink",
        "templatedata",
        "templatestyles",
        "table",
        "nowiki",
        "hiero",
        "inputbox",
    ]
)
DROP_SECTIONS = frozenset(
    [
        "references",
        "notes",
        "notes and references",
        "footnotes",
        "citations",
        "sources",
        "bibliography",
        "works cited",
        "further reading",
        "external links",
        "see also",
        "gallery",
    ]
)


def _param(tpl: Any, key: str | int) -> str:
    name = str(key)
    return str(tpl.get(name).value).strip() if tpl.has(name) else ""


def _positional(tpl: Any) -> list[Any]:
    return [p.value for p in tpl.params if not p.showkey]


def _template_text(tpl: Any, out: list[str]) -> None:
    """The few inline templates whose text belongs to the sentence; every other one is dropped."""
    name = str(tpl.name).strip().lower().replace("_", " ")
    pos = _positional(tpl)
    if name == "convert" and len(pos) >= 2:
        out.append(f"{str(pos[0]).strip()} {str(pos[1]).strip()}")
    elif (name == "lang" or name.startswith("lang-") or name == "transl") and pos:
        _nodes(pos[-1].nodes, out)
    elif name in ("nowrap", "nobr", "small", "smaller", "big", "em", "sic", "ill", "vr") and pos:
        _nodes(pos[0].nodes, out)


def _link_text(link: Any, out: list[str]) -> None:
    title = str(link.title).strip()
    if _MEDIA.match(title):
        return
    if link.text is not None:
        _nodes(link.text.nodes, out)
    elif not (_INTERLANG.match(title) and not title.startswith(":")):
        title = title.lstrip(":")
        out.append(title.split("#", 1)[0] or title.lstrip("#"))


def _nodes(nodes: list[Any], out: list[str]) -> None:
    """Append the visible text of wikicode nodes to ``out``."""
    from mwparserfromhell import nodes as n

    for node in nodes:
        kind = type(node)
        if kind is n.Text:
            out.append(node.value)
        elif kind is n.Wikilink:
            _link_text(node, out)
        elif kind is n.Template:
            _template_text(node, out)
        elif kind is n.Tag:
            tag = str(node.tag).strip().lower()
            if tag in DROP_TAGS:
                continue
            if tag == "br":
                out.append("\n")
            elif node.contents is not None:
                _nodes(node.contents.nodes, out)
        elif kind is n.ExternalLink:
            if node.title is not None:
                _nodes(node.title.nodes, out)
        elif kind is n.HTMLEntity:
            out.append(node.normalize())
        elif kind is n.Heading:
            out.append("\n")
            _nodes(node.title.nodes, out)
            out.append("\n")
        # comments, template arguments: nothing


def _kept(nodes: list[Any]) -> list[Any]:
    """Top-level nodes without the sections in DROP_SECTIONS (and their subsections)."""
    from mwparserfromhell import nodes as n

    run: list[Any] = []
    drop_level = 0
    for node in nodes:
        if type(node) is n.Heading:
            if drop_level and node.level > drop_level:
                continue
            drop_level = 0
            if str(node.title.strip_code()).strip().lower() in DROP_SECTIONS:
                drop_level = node.level
                continue
        if not drop_level:
            run.append(node)
    return run


def _tidy(text: str) -> str:
    lines = []
    for line in _MAGIC.sub("", text).split("\n"):
        line = _SPACES.sub(" ", line).strip()
        line = _EMPTY_PARENS.sub("", _BEFORE_PUNCT.sub(r"\1", line)).strip()
        if line and not _NO_WORDS.match(line):
            lines.append(line)
    return "\n".join(lines)


def _drop_blocks(text: str) -> str:
    """``text`` without its top-level templates (except INLINE_TEMPLATES) and tables, found by
    counting braces: the parser then builds no nodes for them. An unbalanced one is left to the
    parser. Tags whose content may hold braces (math, code, ...) are gone before this."""
    out: list[str] = []
    depth, last, start = 0, 0, 0
    for m in _BLOCK_TOKEN.finditer(text):
        token = m.group().strip()
        opening = token in ("{{", "{|")
        if depth == 0:
            if not opening or (token == "{{" and _INLINE.match(text, m.start())):
                continue
            start = m.start()
            out.append(text[last:start])
        depth += 1 if opening else -1
        if depth == 0:
            last = m.end()
    out.append(text[start:] if depth else text[last:])
    return "".join(out)


def _link_sub(m: re.Match[str]) -> str:
    title, label = m.group(1).strip(), m.group(2)
    if _MEDIA.match(title):
        return ""
    if label is not None:
        return label
    if _INTERLANG.match(title) and not title.startswith(":"):
        return ""
    title = title.lstrip(":")
    return title.split("#", 1)[0] or title.lstrip("#")


def _resolve_links(text: str) -> str:
    """Links without links inside replaced by their text (inner ones first: a file's caption may
    hold links), as ``_link_text`` would; the parser then has none of them to build."""
    for _ in range(3):
        text, n = _SIMPLE_LINK.subn(_link_sub, text)
        if not n:
            break
    return text


def wikitext_to_text(wikitext: str) -> str:
    """Plain article text of a page's wikitext (see the module docstring for what is kept)."""
    import mwparserfromhell

    wikitext = _drop_blocks(_DROP_CONTENT.sub("", _REF.sub("", _COMMENT.sub("", wikitext))))
    code = mwparserfromhell.parse(_resolve_links(wikitext))
    out: list[str] = []
    _nodes(_kept(code.nodes), out)
    return _tidy("".join(out))


def _page_document(
    page: bytes, where: str, stats: DocStats, clean: Callable[[str], str]
) -> str | None:
    try:
        elem = ET.fromstring(b"<page>" + page + b"</page>")
    except ET.ParseError as exc:
        stats.bad.add("malformed_page", f"{where} ({exc})")
        return None
    if (elem.findtext("ns") or "0").strip() != "0":
        stats.skip("other_namespace")
        return None
    text = elem.findtext("revision/text") or ""
    if elem.find("redirect") is not None or text.lstrip()[:9].upper() == "#REDIRECT":
        stats.skip("redirect")
        return None
    try:
        plain = clean(text)
    except Exception as exc:  # the parser's own errors on pathological markup
        title = elem.findtext("title") or "?"
        stats.bad.add("unparsable_wikitext", f"{where} '{title}' ({type(exc).__name__})")
        return None
    if not plain:
        stats.skip("empty_article")
        return None
    return plain


def xml_documents(
    data: bytes,
    where: Callable[[int], str],
    stats: DocStats,
    tail_cut: bool = False,
    clean: Callable[[str], str] = wikitext_to_text,
) -> Iterator[str]:
    """The articles among the ``<page>`` elements of a piece of dump XML (header and footer of
    the dump, if there, are ignored); ``where(byte)`` names a position for the bad-input log."""
    end = 0
    for m in _PAGE.finditer(data):
        end = m.end()
        doc = _page_document(m.group(1), where(m.start()), stats, clean)
        if doc is not None:
            yield doc
    m2 = _PAGE_OPEN.search(data, end)
    if m2 and not tail_cut:
        stats.bad.add("unclosed_page", where(m2.start()))


def stream_documents(
    data: bytes, source: str, offset: int, stats: DocStats, clean: Callable[[str], str]
) -> Iterator[str]:
    """Articles of whole bz2 streams of a multistream dump; ``offset``: the file offset of
    ``data``. A stream that does not decompress is counted as PAGES_PER_STREAM bad pages."""
    starts = [m.start() for m in BZ2_STREAM.finditer(data)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    for s, e in zip(starts, [*starts[1:], len(data)]):
        dec = bz2.BZ2Decompressor()
        try:  # bounded: a stream that inflates past MAX_STREAM_BYTES is not a stream of pages
            xml = dec.decompress(data[s:e], max_length=MAX_STREAM_BYTES)
        except (OSError, EOFError, ValueError):
            xml = b""
        if not dec.eof:
            reason = "oversized_stream" if len(xml) >= MAX_STREAM_BYTES else "broken_stream"
            stats.bad.add(reason, f"{source}:byte {offset + s}", PAGES_PER_STREAM)
            continue
        base = offset + s

        def where(pos: int, base: int = base) -> str:
            return f"{source}:stream at byte {base}, +{pos}"

        yield from xml_documents(xml, where, stats, clean=clean)
