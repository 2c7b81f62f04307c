"""Wikipedia as users download it: a real multistream ``pages-articles`` dump with its index (built
by data_prep.tools.synth), the same dump as one bz2 stream, WikiExtractor's output folders (plain and
``--json``), wikitext to text, and broken input (a corrupt stream, unclosed ``<doc>`` s)."""

from __future__ import annotations

import bz2
import itertools
import shutil
from pathlib import Path

import pytest

from data_prep.sources import DocStats, ReadOptions, iter_documents, plan_units
from data_prep.sources.compressed import BZ2_STREAM, read_dump_index
from data_prep.sources.wiki import wikitext_to_text
from data_prep.tools.synth import (
    Article,
    Page,
    make_pages,
    page_xml,
    write_dump,
    write_wikiextractor,
)

ARTICLE = """{{Short description|1815 novel}}
{{Infobox book
| name = Emma
| author = [[Jane Austen]]
| pages = 474<ref>{{cite book |title=X |year=1999}}</ref>
}}
'''''Emma''''' is a novel by [[Jane Austen|Austen]],<ref name="a">Smith, p. 1.</ref> set in \
[[Highbury]].<!-- a comment --> It weighs {{convert|1.2|kg}}&nbsp;in ''all'' {{circa|1815}}.

== Plot ==
[[File:Emma.jpg|thumb|left|Emma, by [[Hugh Thomson]]]]
Emma meets [[wikt:clever|clever]] people.<ref name="a"/> See [http://example.org a review].
* '''Emma''' – the heroine
# Mr. Knightley
{| class="wikitable"
|-
! Year !! Publisher
|-
| 1815 || Murray
|}
<math>E = mc^2</math>

=== Themes ===
Marriage and class.

== See also ==
* [[Pride and Prejudice]]

== References ==
{{Reflist}}

== External links ==
* [https://example.org Emma online]

{{Jane Austen}}
__NOTOC__
[[Category:1815 novels]]
[[fr:Emma (roman)]]
"""
EXPECTED = """Emma is a novel by Austen, set in Highbury. It weighs 1.2 kg in all.
Plot
Emma meets clever people. See a review.
Emma – the heroine
Mr. Knightley
Themes
Marriage and class."""


def test_wikitext_to_text_keeps_the_prose_and_drops_the_markup() -> None:
    assert wikitext_to_text(ARTICLE) == EXPECTED


@pytest.fixture(scope="module")
def pages() -> list[Page | Article]:
    return list(make_pages(150_000, seed=3))


def articles(pages: list[Page | Article]) -> list[Article]:
    return [p for p in pages if isinstance(p, Article)]


def plain(pages: list[Page | Article]) -> list[Page]:
    return [p.page if isinstance(p, Article) else p for p in pages]


def read_all(specs: list[str], unit_bytes: int, **opts: object) -> tuple[list[str], DocStats]:
    stats = DocStats()
    units = plan_units(specs, unit_bytes, 1)
    read = ReadOptions(**opts)  # type: ignore[arg-type]
    return [t for u in units for t in iter_documents(u, read, stats)], stats


def test_multistream_dump_one_document_per_article(
    tmp_path: Path, pages: list[Page | Article]
) -> None:
    dump = tmp_path / "enwiki-20240501-pages-articles-multistream.xml.bz2"
    index, _ = write_dump(dump, plain(pages), pages_per_stream=5)
    streams = sorted(read_dump_index(index))
    units = plan_units([str(dump)], 12_000, 1)
    assert len(units) > 3 and {u.kind for u in units} == {"mwdump"}
    assert units[0].start == 0 and units[-1].end == dump.stat().st_size
    assert all(a.end == b.start and b.start in streams for a, b in itertools.pairwise(units))
    docs, stats = read_all([str(dump)], 12_000, piece_bytes=30_000)
    arts = articles(pages)
    assert docs == [wikitext_to_text(a.page.text) for a in arts]
    for doc, art in zip(docs, arts):
        assert all(p in doc for p in art.paragraphs), art.page.title
        for markup in ("{{", "[[", "<ref", "Category:", "thumb|", "cite book", "|-", "http"):
            assert markup not in doc, (markup, art.page.title)
    redirects = sum(1 for p in plain(pages) if p.redirect)
    others = sum(1 for p in plain(pages) if p.ns != 0)
    assert stats.skipped == {"redirect": redirects, "other_namespace": others}
    assert redirects > 5 and others > 5 and stats.bad.total == 0
    # without its index the dump is cut at the streams found by their magic bytes
    shutil.move(index, tmp_path / "elsewhere.txt.bz2")
    units2 = plan_units([str(dump)], 12_000, 1)
    assert {u.kind for u in units2} == {"mwdump"} and len(units2) > 3
    assert read_all([str(dump)], 12_000)[0] == docs


def test_single_stream_dump_reads_the_same(tmp_path: Path, pages: list[Page | Article]) -> None:
    multi = tmp_path / "enwiki-pages-articles-multistream.xml.bz2"
    write_dump(multi, plain(pages), pages_per_stream=5)
    single = tmp_path / "enwiki-pages-articles.xml.bz2"
    single.write_bytes(bz2.compress(bz2.decompress(multi.read_bytes())))
    units = plan_units([str(single)], 40_000, 1)
    assert {u.kind for u in units} == {"mediawiki"} and len(units) > 3  # decompressed ranges
    assert read_all([str(single)], 40_000)[0] == read_all([str(multi)], 40_000)[0]


def test_a_broken_stream_is_counted_and_the_rest_read(
    tmp_path: Path, pages: list[Page | Article]
) -> None:
    dump = tmp_path / "enwiki-x-pages-articles-multistream.xml.bz2"
    index, _ = write_dump(dump, plain(pages), pages_per_stream=5)
    streams = sorted(read_dump_index(index))
    bad_at = streams[len(streams) // 2]
    data = bytearray(dump.read_bytes())
    data[bad_at + 60 : bad_at + 90] = bytes(30)  # inside the stream, after its header
    dump.write_bytes(bytes(data))
    docs, stats = read_all([str(dump)], 12_000)
    lost = [p for p in plain(pages)[5 * streams.index(bad_at) :][:5]]
    kept = [wikitext_to_text(a.page.text) for a in articles(pages) if a.page not in lost]
    assert docs == kept and len(kept) < len(articles(pages))
    assert stats.bad.counts == {"broken_stream": 100}
    assert stats.bad.locations["broken_stream"] == [f"{dump}:byte {bad_at}"]


def test_wikiextractor_folders(tmp_path: Path) -> None:
    texts = [f"Paragraph one of {i}, AT&T <b> 5 > 3.\nParagraph two of {i}." for i in range(300)]
    arts = [(i + 10, f"Title {i}", t) for i, t in enumerate(texts)]
    for json_lines in (False, True):
        folder = tmp_path / ("json" if json_lines else "plain")
        files = write_wikiextractor(folder, arts, json_lines=json_lines, file_bytes=300)
        assert len(files) > 100 and files[0].relative_to(folder).as_posix() == "AA/wiki_00"
        assert files[100].relative_to(folder).as_posix() == "AB/wiki_00"
        units = plan_units([str(folder)], 5000, 1)
        assert len(units) < len(files) and {u.kind for u in units} == {"group"}
        docs, stats = read_all([str(folder)], 5000)
        assert docs == texts and stats.bad.total == 0


def test_wikiextractor_unclosed_doc_and_stray_text(tmp_path: Path) -> None:
    path = tmp_path / "wiki_00"
    path.write_text(
        '<doc id="1" url="u1" title="A">\nA\n\nnever closed\n'  # line 1
        '<doc id="2" url="u2" title="B">\nB\n\nbody of B\n</doc>\n'  # line 5
        "stray text\nmore stray\n"  # line 10
        '<doc id="3" url="u3" title="Empty">\nEmpty\n\n</doc>\n'  # line 12
        '<doc id="4" url="u4" title="C">\nC\n\ncut off at the end\n'  # line 16
    )
    docs, stats = read_all([str(path)], 1 << 20)
    assert docs == ["body of B"]
    assert stats.bad.counts == {"unclosed_doc": 2, "text_outside_doc": 1}
    assert stats.bad.locations["unclosed_doc"] == [f"{path}:1", f"{path}:16"]
    assert stats.bad.locations["text_outside_doc"] == [f"{path}:10"]
    assert stats.skipped == {"empty_article": 1}


def test_page_xml_round_trips_markup_characters() -> None:
    page = Page('Q&A <"x">', 0, 7, "'''Q&A''' is <b>bold</b> & [[x|y]].")
    xml = page_xml(page)
    assert "&amp;" in xml and BZ2_STREAM.search(bz2.compress(xml.encode()))
    assert wikitext_to_text(page.text) == "Q&A is bold & y."


@pytest.mark.parametrize(
    ("wikitext", "text"),
    [
        # braces inside math never unbalance the template count
        ("A <math>x^{2}}}</math> b {{cite web|t={{x}}}} c.", "A b c."),
        # an inline template inside a dropped one, and a kept one with a template inside
        ("{{Infobox|x={{convert|1|km}}}}Go {{convert|3|km|{{x}}}} now.", "Go 3 km now."),
        # a table at the start of a line, indented, with a template inside
        ("Text.\n  {| class=x\n| {{flag|UK}} || 1\n|}\nMore.", "Text.\nMore."),
        # an unclosed template is left to the parser, the text before it kept
        ("Kept text. {{Unclosed", "Kept text. {{Unclosed"),
    ],
)
def test_templates_and_tables_are_dropped_before_parsing(wikitext: str, text: str) -> None:
    assert wikitext_to_text(wikitext) == text


@pytest.mark.parametrize(
    ("wikitext", "text"),
    [
        ("[[File:a.jpg|thumb|A [[b|caption]] here]]Then [[c]]s and [[d (x)|e]].", "Then cs and e."),
        (
            "[[:Category:Novels|novels]] [[Category:Novels]][[fr:Emma]] [[:fr:Emma|French]]",
            "novels French",
        ),
        ("[[Emma#Plot]] and [[#Plot|the plot]] and [[wikt:ok|ok]].", "Emma and the plot and ok."),
        ("A [[link with ''style'']] and [[a|b|c]].", "A link with style and b|c."),
    ],
)
def test_links_are_resolved_as_the_parser_would(wikitext: str, text: str) -> None:
    assert wikitext_to_text(wikitext) == text


def test_a_stream_that_inflates_without_end_is_refused_in_bounded_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bz2 bomb: 64 MiB of zeros in 50-odd bytes. Decompressed without a bound it is all in
    memory at once (and a real one is gigabytes); it is counted as bad input after the bound."""
    import tracemalloc

    from data_prep.sources import wiki

    monkeypatch.setattr(wiki, "MAX_STREAM_BYTES", 1 << 20)
    bomb = bz2.compress(b"<page>" + bytes(64 << 20))
    assert len(bomb) < 1000
    stats = DocStats()
    tracemalloc.start()
    docs = list(wiki.stream_documents(bomb, "bomb.xml.bz2", 0, stats, wikitext_to_text))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert docs == [] and stats.bad.counts == {"oversized_stream": 100}
    assert peak < 8 << 20, peak
