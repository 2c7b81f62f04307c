"""Wikitext-to-text extractors compared on the synthetic articles of data_prep.tools.synth.

    python -m data_prep.tools.bench_wikitext [--mb 3] [--repeats 3]

For ours (``sources.wiki.wikitext_to_text``), mwparserfromhell's ``strip_code()`` and, when they
are installed (they are not dependencies: GPL and AGPL), wikitextparser's ``plain_text()`` and
wikiextractor's ``Extractor.clean_text``: MB/s of wikitext (best of ``--repeats`` interleaved
runs), how many of the articles' prose paragraphs come out verbatim (whitespace aside), and how
many articles keep markup (template braces, link brackets, refs, categories, file options,
tables, math, the reference and link sections). Prints one JSON line per extractor.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable

from data_prep.tools.synth import Article, make_pages

MARKUP = [
    "{{", "}}", "[[", "]]", "<ref", "Category:", "thumb", "|-", "http", "cite book", "Editions",
    "editor note", "Short description", "fr:", "E = mc", "Reflist", "List of works", "''",
]  # fmt: skip


def extractors() -> dict[str, Callable[[Article], str]]:
    import mwparserfromhell

    from data_prep.sources.wiki import wikitext_to_text

    out: dict[str, Callable[[Article], str]] = {
        "ours": lambda a: wikitext_to_text(a.page.text),
        "mwparserfromhell.strip_code": lambda a: mwparserfromhell.parse(a.page.text).strip_code(),
    }
    if importlib.util.find_spec("wikitextparser"):
        import wikitextparser

        out["wikitextparser.plain_text"] = lambda a: wikitextparser.parse(a.page.text).plain_text()
    if importlib.util.find_spec("wikiextractor"):
        from wikiextractor.extract import Extractor

        def wikiextractor(a: Article) -> str:
            return "\n".join(
                Extractor(1, 1, "", a.page.title, [a.page.text]).clean_text(a.page.text)
            )

        out["wikiextractor.clean_text"] = wikiextractor
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.tools.bench_wikitext", description=__doc__.split("\n")[0]
    )
    p.add_argument("--mb", type=float, default=3, help="MB of wikitext (default 3)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    arts = [x for x in make_pages(int(args.mb * 1e6), seed=7) if isinstance(x, Article)]
    nbytes = sum(len(a.page.text.encode()) for a in arts)
    fns = extractors()
    best = dict.fromkeys(fns, float("inf"))
    outs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            outs[name] = [fn(a) for a in arts]
            best[name] = min(best[name], time.perf_counter() - start)

    def norm(text: str) -> str:
        return " ".join(text.split())

    paragraphs = sum(len(a.paragraphs) for a in arts)
    for name, texts in outs.items():
        kept = sum(norm(p) in norm(t) for a, t in zip(arts, texts) for p in a.paragraphs)
        leaky = sum(any(m in t for m in MARKUP) for t in texts)
        row = {
            "extractor": name,
            "mb_per_s": round(nbytes / best[name] / 1e6, 2),
            "paragraphs_kept": f"{kept}/{paragraphs}",
            "articles_with_markup": f"{leaky}/{len(arts)}",
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
