"""Synthetic corpora in the layouts users have, made from the bundled Austen novels (for the
benchmark and the tests): real formats, deterministic content.

- :func:`write_dump`: a MediaWiki ``pages-articles-multistream.xml.bz2`` dump (a header stream,
  then 100 pages per bz2 stream, then the footer) with its ``-multistream-index.txt.bz2``
  (``offset:page_id:title``), whose articles are real wikitext: infoboxes, citation templates in
  ``<ref>``s, links with and without labels, files, tables, lists, headings, comments, entities,
  categories, interlanguage links, reference and link sections, plus redirects, talk pages and
  other namespaces.
- :func:`write_wikiextractor`: WikiExtractor's output folder (``AA/wiki_00`` ...), plain
  ``<doc>`` blocks or ``--json`` lines.

Every article's prose paragraphs are kept in :attr:`Article.paragraphs`, so a test can check
that extraction gives back exactly the prose and none of the markup.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import html
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

AUSTEN = Path(__file__).resolve().parents[1] / "corpus" / "austen"
_UNSAFE = re.compile(r"[\[\]{}|<>&=*#~_]|''|http| [,.;:!?)\]]|^\W")
SECTION_NAMES = ["Plot", "Characters", "Themes", "Background", "Reception", "Legacy", "Style"]
SITEINFO = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.11" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.42.0-wmf.5</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
    </namespaces>
  </siteinfo>
"""


def austen_paragraphs() -> list[str]:
    """Paragraphs of the six novels, lines joined, safe to use as wikitext prose."""
    out = []
    for path in sorted(AUSTEN.glob("*.txt.gz")):
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        for block in text.split("\n\n"):
            para = " ".join(block.split())
            if len(para) > 40 and not _UNSAFE.search(para):
                out.append(para)
    return out


@dataclass
class Page:
    title: str
    ns: int
    id: int
    text: str
    redirect: str = ""


@dataclass
class Article:
    """An article page and the prose its text must give back."""

    page: Page
    paragraphs: list[str] = field(default_factory=list)


def _cite(rng: random.Random) -> str:
    year = rng.randint(1800, 2020)
    return (
        f"<ref>{{{{cite book |last=Author{rng.randint(1, 99)} |first=A. |title=Studies of "
        f"{rng.choice(SECTION_NAMES)} |publisher=[[Oxford University Press]] |year={year} "
        f"|page={rng.randint(1, 400)} |isbn=978-0-19-{rng.randint(100000, 999999)}-0}}}}</ref>"
    )


def _markup(para: str, rng: random.Random, refs: list[str]) -> str:
    """Wikitext whose rendered text is ``para``: links, styles, refs, comments, entities."""
    words = para.split(" ")
    out = []
    for i, w in enumerate(words):
        r = rng.random()
        core = w.strip(".,;:!?\"'()")
        if core and w.startswith(core) and r < 0.06:
            w = f"[[{core}]]{w[len(core) :]}"
        elif core and w.startswith(core) and r < 0.09:
            w = f"[[{core.title()} (disambiguation)|{core}]]{w[len(core) :]}"
        elif core and w.startswith(core) and r < 0.10:
            w = f"''{core}''{w[len(core) :]}"
        elif r < 0.11 and i:
            w = f"<!-- editor note {rng.randint(1, 9)} -->{w}"
        out.append(w)
        if w.endswith(".") and rng.random() < 0.25:
            if refs and rng.random() < 0.3:
                out[-1] += f'<ref name="{rng.choice(refs)}"/>'
            else:
                name = f"r{len(refs)}"
                refs.append(name)
                out[-1] += _cite(rng).replace("<ref>", f'<ref name="{name}">', 1)
    plain = [i for i in range(1, len(out)) if out[i - 1] == words[i - 1] and out[i] == words[i]]
    nbsp = rng.choice(plain) if plain and rng.random() < 0.3 else -1
    return "".join(("&nbsp;" if i == nbsp else " ") + w if i else w for i, w in enumerate(out))


def _infobox(rng: random.Random, title: str) -> str:
    return (
        f"{{{{Infobox book\n| name = {title}\n| image = {title.replace(' ', '_')}.jpg\n"
        f"| author = [[Jane Austen]]\n| country = United Kingdom\n| language = English\n"
        f"| genre = [[Novel of manners]]\n| publisher = [[Thomas Egerton]]\n"
        f"| pub_date = {rng.randint(1790, 1820)}{_cite(rng)}\n| pages = {rng.randint(100, 900)}\n"
        f"| followed_by = ''[[{rng.choice(SECTION_NAMES)} Abbey]]''\n}}}}\n"
    )


def _table(rng: random.Random) -> str:
    rows = "".join(
        f"|-\n| {rng.randint(1800, 1900)} || [[Publisher {rng.randint(1, 9)}]] || {rng.randint(1, 5)}\n"
        for _ in range(rng.randint(2, 5))
    )
    return (
        '{| class="wikitable sortable"\n|+ Editions\n|-\n! Year !! Publisher !! Volumes\n'
        + rows
        + "|}\n"
    )


def article_text(title: str, paras: list[str], rng: random.Random) -> str:
    """The wikitext of one article whose prose is ``paras``."""
    refs: list[str] = []
    parts = ["{{Short description|Novel by Jane Austen}}\n{{Use dmy dates|date=May 2020}}\n"]
    if rng.random() < 0.6:
        parts.append(_infobox(rng, title))
    parts.append(f"'''{title}''' {_markup(paras[0], rng, refs)}\n\n")
    for k, para in enumerate(paras[1:]):
        if k % 2 == 0:
            parts.append(f"== {rng.choice(SECTION_NAMES)} ==\n")
            if rng.random() < 0.3:
                parts.append(f"{{{{Main|{title} ({rng.choice(SECTION_NAMES).lower()})}}}}\n")
            if rng.random() < 0.3:
                parts.append(
                    f"[[File:Scene {rng.randint(1, 99)}.jpg|thumb|left|upright=0.8|A scene, drawn by [[Hugh Thomson]]]]\n"
                )
        parts.append(_markup(para, rng, refs) + "\n\n")
        if rng.random() < 0.15:
            parts.append(_table(rng))
        if rng.random() < 0.15:
            parts.append("<math>E = mc^2</math>\n")
    parts.append(f"== See also ==\n* [[{title} (film)]]\n* [[List of works by Jane Austen]]\n\n")
    parts.append("== References ==\n{{Reflist}}\n\n== External links ==\n")
    parts.append(f"* [https://example.org/{rng.randint(1, 9999)} {title}] at Example\n")
    parts.append(
        "* {{Gutenberg|no=158|name=" + title + "}}\n\n{{Jane Austen}}\n{{Authority control}}\n\n"
    )
    parts.append(f"{{{{DEFAULTSORT:{title}}}}}\n__NOTOC__\n")
    parts += [f"[[Category:{y} novels]]\n" for y in rng.sample(range(1790, 1830), 2)]
    parts.append(f"[[fr:{title} (roman)]]\n[[de:{title} (Roman)]]\n")
    return "".join(parts)


def make_pages(target_bytes: int, seed: int = 0) -> Iterator[Page | Article]:
    """Pages in dump order until their wikitext reaches ``target_bytes``: articles (as
    :class:`Article`), and after some of them a redirect, a talk page or another namespace."""
    rng = random.Random(seed)
    paras = austen_paragraphs()
    page_id, total, i = 10, 0, 0
    while total < target_bytes:
        k = rng.randint(3, 9)
        start = rng.randrange(len(paras))
        mine = [paras[(start + j) % len(paras)] for j in range(k)]
        title = f"{paras[start].split(' ')[0].strip('.,;:!?')} {i}".strip().title()
        page = Page(title, 0, page_id, article_text(title, mine, rng))
        yield Article(page, mine)
        total += len(page.text)
        page_id, i = page_id + 1, i + 1
        r = rng.random()
        if r < 0.35:
            yield Page(
                f"{title} novel", 0, page_id, f"#REDIRECT [[{title}]]\n\n{{{{R from move}}}}", title
            )
        elif r < 0.5:
            yield Page(
                f"Talk:{title}",
                1,
                page_id,
                "{{WikiProject Novels}}\n== Sources ==\nIs this cited? ~~~~",
            )
        elif r < 0.55:
            yield Page(f"Category:{title}", 14, page_id, "[[Category:Novels]]")
        elif r < 0.6:
            yield Page(f"Template:{title}", 10, page_id, "{{Navbox|name=" + title + "}}")
        page_id += 1


def page_xml(page: Page) -> str:
    sha = hashlib.sha1(page.text.encode()).hexdigest()
    redirect = f"    <redirect title={quoteattr(page.redirect)} />\n" if page.redirect else ""
    return (
        f"  <page>\n    <title>{escape(page.title)}</title>\n    <ns>{page.ns}</ns>\n"
        f"    <id>{page.id}</id>\n{redirect}    <revision>\n      <id>{page.id * 7}</id>\n"
        f"      <timestamp>2024-05-01T00:00:00Z</timestamp>\n      <contributor>\n"
        f"        <username>Editor</username>\n        <id>42</id>\n      </contributor>\n"
        f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
        f'      <text bytes="{len(page.text.encode())}" xml:space="preserve">{escape(page.text)}</text>\n'
        f"      <sha1>{sha}</sha1>\n    </revision>\n  </page>\n"
    )


def write_dump(
    path: Path, pages: list[Page], pages_per_stream: int = 100, level: int = 9
) -> tuple[Path, int]:
    """Write ``path`` (``...-multistream.xml.bz2``) and its index; (index path, XML bytes)."""
    index_lines = []
    xml_bytes = 0
    group: list[Page] = []
    with open(path, "wb") as fh:
        for k in range(-1, len(pages) // pages_per_stream + 2):
            if k == -1:
                chunk, group = SITEINFO, []
            elif k * pages_per_stream >= len(pages):
                chunk, group = "</mediawiki>\n", []
            else:
                group = pages[k * pages_per_stream : (k + 1) * pages_per_stream]
                chunk = "".join(page_xml(p) for p in group)
            offset = fh.tell()
            data = chunk.encode("utf-8")
            xml_bytes += len(data)
            fh.write(bz2.compress(data, level))
            index_lines += [f"{offset}:{p.id}:{p.title}\n" for p in group]
            if chunk.startswith("</mediawiki>"):
                break
    index = path.with_name(path.name.replace(".xml.bz2", "-index.txt.bz2"))
    index.write_bytes(bz2.compress("".join(index_lines).encode("utf-8")))
    return index, xml_bytes


def write_wikiextractor(
    folder: Path,
    articles: list[tuple[int, str, str]],
    json_lines: bool = False,
    file_bytes: int = 1 << 20,
) -> list[Path]:
    """WikiExtractor's output for (id, title, text) articles: ``AA/wiki_00``, ``AA/wiki_01``,
    ... of about ``file_bytes`` each, 100 per folder; the files written."""
    paths: list[Path] = []
    fh = None
    size = 0
    for page_id, title, text in articles:
        if fh is None or size >= file_bytes:
            if fh is not None:
                fh.close()
            n = len(paths)
            sub = folder / (chr(65 + n // 2600) + chr(65 + n // 100 % 26))
            sub.mkdir(parents=True, exist_ok=True)
            paths.append(sub / f"wiki_{n % 100:02d}")
            fh = open(paths[-1], "w", encoding="utf-8")  # noqa: SIM115 - closed on rotation
            size = 0
        url = f"https://en.wikipedia.org/wiki?curid={page_id}"
        if json_lines:
            rec = {
                "id": str(page_id),
                "revid": str(page_id * 7),
                "url": url,
                "title": title,
                "text": text,
            }
            block = json.dumps(rec, ensure_ascii=False) + "\n"
        else:
            body = html.escape(text, quote=False)
            block = f'<doc id="{page_id}" url="{url}" title="{title}">\n{title}\n\n{body}\n</doc>\n'
        fh.write(block)
        size += len(block.encode("utf-8"))
    if fh is not None:
        fh.close()
    return paths
