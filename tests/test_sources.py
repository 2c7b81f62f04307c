"""Tests of data_prep.sources: text layouts (--txt-docs), planning (groups of small files, cuts of
large plain and compressed files), the reader's bounded pieces, long-document cuts, sniffing,
bad-input accounting and errors. Wikipedia: tests/test_wiki.py; HF folders: test_sources_hf.py."""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
from pathlib import Path

import pytest

from data_prep.errors import UserError
from data_prep.sources import (
    BadInput,
    DocStats,
    ReadOptions,
    UnitReader,
    expand_inputs,
    iter_documents,
    plan_units,
)
from data_prep.sources.documents import cut_text
from data_prep.sources.inputs import sniff_kind
from data_prep.sources.rules import RULES, choose_cut

DOCS = ["first document", "second one,\nwith two lines", "Ünïcödé café 東京", "last"]


def documents(
    specs: list[str],
    unit_bytes: int = 1 << 30,
    unit_rows: int = 1 << 30,
    text_field: str = "text",
    hf_split: str = "train",
    txt_docs: str = "blank",
    max_doc: int = 4 << 20,
    piece_bytes: int = 1 << 20,
    unit_max_files: int = 0,
) -> tuple[list[str], DocStats]:
    """All documents of ``specs`` through plan_units + iter_documents, and the reading stats."""
    stats = DocStats()
    units = plan_units(
        specs, unit_bytes, unit_rows, hf_split, False, txt_docs, max_doc, unit_max_files
    )
    opts = ReadOptions(text_field, txt_docs, max_doc, piece_bytes, hf_split)
    return [t for u in units for t in iter_documents(u, opts, stats)], stats


def compress(path: Path, kind: str) -> Path:
    data = path.read_bytes()
    if kind == "gz":
        out = path.with_name(path.name + ".gz")
        out.write_bytes(gzip.compress(data))
    elif kind == "bz2":
        out = path.with_name(path.name + ".bz2")
        out.write_bytes(bz2.compress(data))
    else:
        import zstandard

        out = path.with_name(path.name + ".zst")
        out.write_bytes(zstandard.ZstdCompressor().compress(data))
    return out


def test_txt_blocks_are_documents(tmp_path: Path, prep: type) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(
        b"\n\n  first document  \n\n\n" + b"second one,\r\nwith two lines\r\n \t\n" + b"x"
    )
    got, stats = documents([str(path)])
    assert got == ["first document", "second one,\r\nwith two lines", "x"]
    assert got == prep.txt_documents(path)
    assert stats.bad.total == 0 and stats.cuts == 0


@pytest.mark.parametrize("kind", ["gz", "zst", "bz2"])
def test_compressed_txt_reads_the_same(tmp_path: Path, small_corpus: list[Path], kind: str) -> None:
    plain = tmp_path / "edge.txt"
    plain.write_bytes(small_corpus[2].read_bytes())
    packed = compress(plain, kind)
    assert documents([str(packed)])[0] == documents([str(plain)])[0]


@pytest.mark.parametrize("kind", ["gz", "zst", "bz2"])
def test_a_large_compressed_file_is_cut_like_the_plain_one(tmp_path: Path, kind: str) -> None:
    """Units of a compressed file are decompressed byte ranges, the same as the plain file's."""
    plain = tmp_path / "big.txt"
    plain.write_bytes(_paragraphs(3000))
    packed = compress(plain, kind)
    units = {p: plan_units([str(p)], 9000, 1) for p in (plain, packed)}
    ranges = [(u.start, u.end) for u in units[plain]]
    assert len(ranges) > 3 and [(u.start, u.end) for u in units[packed]] == ranges
    assert all(u.compression == kind for u in units[packed])
    for unit in units[packed][1:]:  # a reader of a later unit skips ahead: same documents
        one = [t for t in iter_documents(unit, ReadOptions(), DocStats())]
        same = [t for t in iter_documents(units[plain][unit.index], ReadOptions(), DocStats())]
        assert one == same and one
    assert documents([str(packed)], 9000)[0] == documents([str(plain)])[0]


@pytest.mark.parametrize("kind", ["", "gz", "zst"])
def test_jsonl(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(DOCS)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    spec = path if not kind else compress(path, kind)
    assert documents([str(spec)])[0] == DOCS


def test_jsonl_other_text_field(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in DOCS))
    assert documents([str(path)], text_field="body")[0] == DOCS
    got, stats = documents([str(path)])
    assert got == [] and stats.bad.counts == {"missing_field": 4}


@pytest.mark.parametrize("kind", ["", "gz"])
def test_parquet(tmp_path: Path, kind: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = pa.table({"id": list(range(6)), "text": [*DOCS, "  ", None]})
    pq.write_table(table, path, row_group_size=2)
    spec = path if not kind else compress(path, kind)
    got, stats = documents([str(spec)])
    assert got == DOCS
    assert stats.bad.counts == {"empty": 1, "missing_field": 1}
    assert stats.bad.locations["empty"] == [f"{spec}:row 5"]
    with pytest.raises(UserError, match="no column 'body'"):
        documents([str(spec)], text_field="body")


def test_a_large_parquet_file_is_cut_at_row_groups(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [f"row {i} " + "words " * (i % 50) for i in range(2000)]
    pq.write_table(pa.table({"text": rows}), tmp_path / "d.parquet", row_group_size=100)
    units = plan_units([str(tmp_path / "d.parquet")], 20_000, 1)
    assert len(units) > 5 and [u.kind for u in units] == ["parquet"] * len(units)
    assert all(a.end == b.start for a, b in itertools.pairwise(units))
    assert units[0].start == 0 and units[-1].end == 20
    assert documents([str(tmp_path / "d.parquet")], 20_000)[0] == [r.strip() for r in rows]


def test_save_to_disk_folder_and_row_units(tmp_path: Path) -> None:
    import datasets

    rows = [f"row number {i}" for i in range(25)]
    datasets.Dataset.from_dict({"text": rows, "n": list(range(25))}).save_to_disk(
        str(tmp_path / "ds")
    )
    got, _ = documents([str(tmp_path / "ds")], unit_rows=10)
    assert got == rows
    units = plan_units([str(tmp_path / "ds")], unit_bytes=1, unit_rows=10)
    assert [(u.kind, u.start, u.end) for u in units] == [
        ("arrow", 0, 10),
        ("arrow", 10, 20),
        ("arrow", 20, 25),
    ]
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": rows[:3]}),
            "test": datasets.Dataset.from_dict({"text": ["t"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert documents([str(tmp_path / "dd")])[0] == rows[:3]
    assert documents([str(tmp_path / "dd")], hf_split="test")[0] == ["t"]
    with pytest.raises(UserError, match="no split 'valid'"):
        documents([str(tmp_path / "dd")], hf_split="valid")


def test_bad_documents_are_counted_with_locations(tmp_path: Path) -> None:
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"good one\n\nbad \xff\xfe bytes\nsecond line\n\ngood two\n\n\xc3\n")
    jl = tmp_path / "bad.jsonl"
    jl.write_bytes(
        b'{"text": "fine"}\n{"text": broken\n{"other": "x"}\n{"text": "   "}\n'
        b'{"text": 3}\n["a list"]\n{"text": "\xff"}\n{"text": "fine again"}\n'
    )
    got, stats = documents([str(txt), str(jl)])
    bad = stats.bad
    assert got == ["good one", "good two", "fine", "fine again"]
    assert bad.counts == {"undecodable": 3, "malformed_json": 1, "missing_field": 3, "empty": 1}
    assert bad.locations["undecodable"] == [f"{txt}:3", f"{txt}:8", f"{jl}:7"]
    assert bad.locations["malformed_json"] == [f"{jl}:2"]
    assert bad.locations["missing_field"] == [f"{jl}:3", f"{jl}:5", f"{jl}:6"]
    assert bad.locations["empty"] == [f"{jl}:4"]
    assert "3 undecodable (first at " in bad.summary()
    assert BadInput.from_json(json.loads(json.dumps(bad.to_json()))) == bad


def test_bad_input_merge_keeps_the_first_locations() -> None:
    a, b = BadInput(), BadInput()
    for i in range(4):
        a.add("empty", f"a:{i}")
        b.add("empty", f"b:{i}")
    a.merge(b)
    assert a.counts == {"empty": 8}
    assert a.locations["empty"] == ["a:0", "a:1", "a:2", "a:3", "b:0"]


def _paragraphs(n: int, seed: int = 0) -> bytes:
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    out = []
    for i in range(n):
        lines = [
            " ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 4))
        ]
        out.append(f"para {i}: " + "\n".join(lines) + "\n" + "\n" * rng.randint(1, 3))
    return "".join(out).encode()


@pytest.mark.parametrize("unit_bytes", [1, 97, 1000, 4096])
def test_byte_range_units_split_no_document(tmp_path: Path, unit_bytes: int, prep: type) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(_paragraphs(300))
    units = plan_units([str(path)], unit_bytes, unit_rows=1)
    size = path.stat().st_size
    assert units[0].start == 0 and units[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(units))
    assert [u.index for u in units] == list(range(len(units)))
    if unit_bytes >= 1000:
        assert 1 < len(units) < size // unit_bytes + 2
    data = path.read_bytes()
    for u in units[1:]:
        assert data[: u.start].endswith(b"\n\n"), "a unit starts elsewhere than after a blank line"
    got, stats = documents([str(path)], unit_bytes)
    assert got == prep.txt_documents(path) and len(got) == 300 and stats.bad.total == 0


@pytest.mark.parametrize("unit_bytes", [1, 50, 333])
def test_byte_range_units_of_jsonl(tmp_path: Path, unit_bytes: int) -> None:
    path = tmp_path / "big.jsonl"
    texts = [f"document {i}" + " x" * (i % 17) for i in range(200)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    units = plan_units([str(path)], unit_bytes, unit_rows=1)
    assert len(units) > 1
    assert documents([str(path)], unit_bytes)[0] == texts


def test_location_in_a_later_unit_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "a"}\n' * 100 + "not json\n")
    stats = DocStats()
    units = plan_units([str(path)], 1000, unit_rows=1)
    for u in units:
        list(iter_documents(u, ReadOptions(), stats))
    assert len(units) == 2 and units[1].start > 0
    assert stats.bad.locations["malformed_json"] == [f"{path}:byte 1400"]


def test_empty_file_is_one_empty_unit(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_bytes(b"")
    units = plan_units([str(tmp_path / "e.txt")], 10, 10)
    assert [(u.start, u.end) for u in units] == [(0, -1)]
    assert documents([str(tmp_path / "e.txt")])[0] == []


def test_globs_expand_sorted_and_in_spec_order(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text("x\n")
    got = expand_inputs([str(tmp_path / "c.jsonl"), str(tmp_path / "*.txt")])
    assert [Path(i.path).name for i in got] == ["c.jsonl", "a.txt", "b.txt"]
    assert [i.kind for i in got] == ["jsonl", "txt", "txt"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.txt", "no such file or folder"),
        ("*.nothing", "no file matches"),
        ("data.csv", "unknown input type .csv"),
        ("plain_folder", "an empty folder"),
    ],
)
def test_bad_specs_are_user_errors(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "plain_folder").mkdir()
    with pytest.raises(UserError, match=message):
        expand_inputs([str(tmp_path / spec)])


# --- --txt-docs and long documents ------------------------------------------------------------
SENTENCES = b"First sentence.\nSecond one, \t\n\n  third after a blank line\r\nfourth\n"


@pytest.mark.parametrize(
    ("txt_docs", "expected"),
    [
        ("blank", ["First sentence.\nSecond one,", "third after a blank line\r\nfourth"]),
        ("line", ["First sentence.", "Second one,", "third after a blank line", "fourth"]),
        ("file", ["First sentence.\nSecond one, \t\n\n  third after a blank line\r\nfourth"]),
    ],
)
def test_txt_docs_conventions(tmp_path: Path, txt_docs: str, expected: list[str]) -> None:
    (tmp_path / "a.txt").write_bytes(SENTENCES)
    (tmp_path / "b.txt").write_bytes(b"another file\nits second line\n")
    got, stats = documents([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], txt_docs=txt_docs)
    tail = {"blank": ["another file\nits second line"], "file": ["another file\nits second line"]}
    assert got == expected + tail.get(txt_docs, ["another file", "its second line"])
    assert stats.bad.total == 0 and stats.cuts == 0


def test_file_convention_drops_undecodable_lines_only(tmp_path: Path) -> None:
    (tmp_path / "book.txt").write_bytes(b"Chapter 1\nbad \xff line\nThe end.\n")
    got, stats = documents([str(tmp_path / "book.txt")], txt_docs="file")
    assert got == ["Chapter 1\nThe end."]
    assert stats.bad.locations == {"undecodable": [f"{tmp_path / 'book.txt'}:2"]}


@pytest.mark.parametrize("txt_docs", ["blank", "line", "file"])
def test_long_documents_are_cut_at_line_boundaries_and_counted(
    tmp_path: Path, txt_docs: str
) -> None:
    """A sentence-per-line book with no blank line: under every convention no document is
    longer than the bound, every line survives whole, and the cuts are counted."""
    lines = [f"sentence {i} of the only paragraph, with words." for i in range(3000)]
    (tmp_path / "book.txt").write_text("\n".join(lines) + "\n")
    got, stats = documents([str(tmp_path / "book.txt")], txt_docs=txt_docs, max_doc=5000)
    assert max(map(len, got)) <= 5000
    assert [ln for doc in got for ln in doc.split("\n")] == lines
    if txt_docs == "line":
        assert stats.cuts == 0 and len(got) == 3000
    else:
        assert stats.cuts == len(got) - 1 and len(got) >= 145000 // 5000


def test_a_line_longer_than_the_bound_is_cut_between_words(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(20000)]
    (tmp_path / "one_line.txt").write_text(" ".join(words))  # about 120 KB, no newline
    for txt_docs in ("blank", "line", "file"):
        got, stats = documents(
            [str(tmp_path / "one_line.txt")], txt_docs=txt_docs, max_doc=4096, piece_bytes=1024
        )
        assert max(map(len, got)) <= 4096 and stats.cuts == len(got) - 1 > 20
        assert " ".join(got).split(" ") == words


def test_cut_text() -> None:
    assert cut_text("aaaa\nbbbb\ncc", 9) == ["aaaa\nbbbb", "cc"]
    assert cut_text("aaa bbb ccc", 5) == ["aaa", "bbb", "ccc"]
    assert cut_text("x" * 12, 5) == ["xxxxx", "xxxxx", "xx"]
    assert cut_text("short", 5) == ["short"]


def test_choose_cut_prefers_a_natural_boundary_within_the_bound() -> None:
    blank = RULES["blank"]
    buf = b"para one\nline\n\npara two goes on\n\npara three\n"
    assert choose_cut(buf, 3, blank, 100, eof=True) == (15, False, 0)  # after the blank line
    assert choose_cut(buf, 17, blank, 100, eof=True) == (33, False, 0)
    assert choose_cut(buf, 35, blank, 100, eof=True) == (len(buf), False, 0)  # the end
    # no boundary yet and the bound not reached: it asks for more bytes
    cut, _, need = choose_cut(buf, 35, blank, 100, eof=False)
    assert cut == -1 and need > len(buf)
    # no blank line within the bound: the last newline before it, counted as forced
    assert choose_cut(b"aaaa\nbbbb\ncccc\ndddd\n", 2, blank, 12, eof=False) == (10, True, 0)
    # no newline: the last space; not even a space: a UTF-8 character boundary
    assert choose_cut(b"aaaa bbbb cccc dddd", 2, blank, 12, eof=False) == (10, True, 0)
    assert choose_cut("é".encode() * 10, 2, blank, 5, eof=False) == (4, True, 0)
    # a JSON line is parsed whole: it may grow past --max-doc-mb
    line = b'{"text": "' + b"x " * 100 + b'"}\n'
    assert choose_cut(line + line, 2, RULES["jsonl"], 12, eof=True) == (len(line), False, 0)


def test_pieces_are_bounded_whatever_the_layout(tmp_path: Path) -> None:
    """What the reader hands a worker is at most piece + record bound bytes, even for a file
    that is one 300 KB line."""
    (tmp_path / "line.txt").write_bytes(b"word " * 60000)
    (tmp_path / "blocks.txt").write_bytes(_paragraphs(2000))
    opts = ReadOptions(max_doc_bytes=8192, piece_bytes=4096)
    reader = UnitReader(opts)
    for name in ("line.txt", "blocks.txt"):
        for txt_docs in ("blank", "line", "file"):
            units = plan_units(
                [str(tmp_path / name)], 1 << 20, 1, txt_docs=txt_docs, max_doc_bytes=8192
            )
            pieces = [p for u in units for p in reader.pieces(u)]
            assert len(pieces) > 10
            assert max(len(p.data) for p in pieces) <= 4096 + 8192 + 1
            assert b"".join(p.data for p in pieces) == (tmp_path / name).read_bytes()


# --- many small files -------------------------------------------------------------------------
def write_books(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"book-{i:04d}.txt")
        paths[-1].write_text(f"Book {i}.\n" + f"A line of book {i}.\n" * (20 + i % 7))
    return paths


def test_small_files_are_grouped_into_units_up_to_the_size(tmp_path: Path) -> None:
    books = write_books(tmp_path / "books", 300)
    total = sum(p.stat().st_size for p in books)
    units = plan_units([str(tmp_path / "books")], 20_000, 1, txt_docs="file")
    assert [u.kind for u in units] == ["group"] * len(units)
    assert total // 20_000 <= len(units) <= total // 20_000 + 2
    members = [m[0] for u in units for m in u.members]
    assert members == [str(p) for p in books]  # every file once, in order
    for u in units:
        assert sum(Path(m[0]).stat().st_size for m in u.members) <= 20_000
    grouped, _ = documents([str(tmp_path / "books")], 20_000, txt_docs="file")
    alone, _ = documents([str(tmp_path / "books")], 20_000, txt_docs="file", unit_max_files=1)
    assert grouped == alone == [p.read_text().strip() for p in books]
    assert len(plan_units([str(tmp_path / "books")], 20_000, 1, unit_max_files=1)) == 300


def test_a_folder_is_walked_in_order_without_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "c" / "sub").mkdir(parents=True)
    for rel in ("c/b.txt", "c/a.jsonl", "c/sub/z.txt", "c/.hidden.txt"):
        (tmp_path / rel).write_text('{"text": "x"}\n' if rel.endswith("jsonl") else "x\n")
    (tmp_path / "c" / ".git").mkdir()
    (tmp_path / "c" / ".git" / "config").write_text("y\n")
    got = expand_inputs([str(tmp_path / "c")])
    assert [Path(i.path).relative_to(tmp_path).as_posix() for i in got] == [
        "c/a.jsonl",
        "c/b.txt",
        "c/sub/z.txt",
    ]


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b'<doc id="1" url="u" title="T">\nT\n', "wikiextractor"),
        (b'{"id": "1", "text": "x"}\n', "jsonl"),
        (b"<mediawiki xmlns=", "mediawiki"),
        (b"Plain text\nmore.\n", "txt"),
        ("Ünïcödé cut mid-character".encode()[:2], "txt"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"latin-1 \xe9t\xe9 text that goes on and on", "binary"),
    ],
)
def test_files_without_a_known_suffix_are_sniffed(head: bytes, kind: str) -> None:
    assert sniff_kind(head)[0] == kind


def test_binary_files_in_a_corpus_folder_are_counted_not_read(tmp_path: Path) -> None:
    books = write_books(tmp_path / "corpus", 5)
    (tmp_path / "corpus" / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(200))
    (tmp_path / "corpus" / "notes").write_bytes(b"plain notes\n\nsecond block\n")
    (tmp_path / "corpus" / "data.bin").write_bytes(b"ab" + bytes(range(256)))
    got, stats = documents([str(tmp_path / "corpus")], txt_docs="file")
    assert got == [p.read_text().strip() for p in books] + ["plain notes\n\nsecond block"]
    assert stats.bad.counts == {"binary": 2}
    assert stats.bad.locations["binary"] == [
        f"{tmp_path / 'corpus' / 'cover.jpg'}:byte 4",
        f"{tmp_path / 'corpus' / 'data.bin'}:byte 2",
    ]


def test_a_json_line_longer_than_the_bound_is_parsed_whole_then_cut(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(50000)]  # about 300 KB of text in one JSON line
    path = tmp_path / "books.jsonl"
    path.write_text(
        json.dumps({"text": " ".join(words)}) + "\n" + json.dumps({"text": "next"}) + "\n"
    )
    got, stats = documents([str(path)], max_doc=100_000, piece_bytes=10_000)
    assert stats.bad.total == 0 and stats.cuts == len(got) - 2 >= 2
    assert " ".join(got[:-1]).split(" ") == words and got[-1] == "next"


def test_a_compressed_parquet_that_would_fill_tmpdir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.sources import tables

    plain = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), plain)
    packed = tmp_path / "rows.parquet.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    docs, _ = documents([str(packed)])
    assert docs[:2] == ["row 0", "row 1"] and list(spool.iterdir()) == []  # unnamed, gone
    free = __import__("shutil").disk_usage(spool).free
    monkeypatch.setattr(tables, "SPOOL_MARGIN", free - 100)  # room for 100 bytes only
    with pytest.raises(UserError, match=r"rows\.parquet\.gz: decompressed, it needs more"):
        documents([str(packed)])
    assert list(spool.iterdir()) == []
