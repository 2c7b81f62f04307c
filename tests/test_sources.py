"""Tests of data_prep.sources: every input kind, byte-range units, bad-input accounting, errors."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.errors import UserError
from data_prep.sources import BadInput, expand_inputs, iter_documents, plan_units

DOCS = ["first document", "second one,\nwith two lines", "Ünïcödé café 東京", "last"]


def documents(
    specs: list[str],
    unit_bytes: int = 1 << 30,
    unit_rows: int = 1 << 30,
    text_field: str = "text",
    hf_split: str = "train",
) -> tuple[list[str], BadInput]:
    """All documents of ``specs`` through plan_units + iter_documents, and the bad-input record."""
    bad = BadInput()
    units = plan_units(specs, unit_bytes, unit_rows, hf_split)
    return [t for u in units for t in iter_documents(u, text_field, bad, hf_split)], bad


def compress(path: Path, kind: str) -> Path:
    data = path.read_bytes()
    if kind == "gz":
        out = path.with_name(path.name + ".gz")
        out.write_bytes(gzip.compress(data))
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
    got, bad = documents([str(path)])
    assert got == ["first document", "second one,\r\nwith two lines", "x"]
    assert got == prep.txt_documents(path)
    assert bad.total == 0


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_compressed_txt_reads_the_same(tmp_path: Path, small_corpus: list[Path], kind: str) -> None:
    plain = tmp_path / "edge.txt"
    plain.write_bytes(small_corpus[2].read_bytes())
    packed = compress(plain, kind)
    assert documents([str(packed)])[0] == documents([str(plain)])[0]
    units = plan_units([str(packed)], unit_bytes=10, unit_rows=10)
    assert len(units) == 1 and units[0].compression == kind  # compressed files are never cut


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
    got, bad = documents([str(path)])
    assert got == [] and bad.counts == {"missing_field": 4}


@pytest.mark.parametrize("kind", ["", "gz"])
def test_parquet(tmp_path: Path, kind: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = pa.table({"id": list(range(6)), "text": [*DOCS, "  ", None]})
    pq.write_table(table, path, row_group_size=2)
    spec = path if not kind else compress(path, kind)
    got, bad = documents([str(spec)])
    assert got == DOCS
    assert bad.counts == {"empty": 1, "missing_field": 1}
    assert bad.locations["empty"] == [f"{spec}:row 5"]
    with pytest.raises(UserError, match="no column 'body'"):
        documents([str(spec)], text_field="body")


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


def test_hf_local_folder_offline(tmp_path: Path) -> None:
    """``hf:FOLDER``: datasets.load_dataset on local data files, with a private cache, offline."""
    folder = tmp_path / "hfdata"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS[:2]))
    (folder / "part-1.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS[2:]))
    code = (
        "import json, sys; from data_prep.sources import BadInput, plan_units, iter_documents; "
        "bad = BadInput(); units = plan_units([sys.argv[1]], 1 << 30, 3); "
        "print(json.dumps([[u.kind, u.start, u.end] for u in units])); "
        "print(json.dumps([t for u in units for t in iter_documents(u, 'text', bad)]))"
    )
    env = {
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, f"hf:{folder}"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=Path(__file__).resolve().parent.parent,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    units_line, docs_line = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(units_line) == [["hf", 0, 3], ["hf", 3, 4]]
    assert sorted(json.loads(docs_line)) == sorted(DOCS)  # file order is datasets' to choose
    assert (tmp_path / "hf_cache").is_dir()


def test_bad_documents_are_counted_with_locations(tmp_path: Path) -> None:
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"good one\n\nbad \xff\xfe bytes\nsecond line\n\ngood two\n\n\xc3\n")
    jl = tmp_path / "bad.jsonl"
    jl.write_bytes(
        b'{"text": "fine"}\n{"text": broken\n{"other": "x"}\n{"text": "   "}\n'
        b'{"text": 3}\n["a list"]\n{"text": "\xff"}\n{"text": "fine again"}\n'
    )
    got, bad = documents([str(txt), str(jl)])
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
    got, bad = documents([str(path)], unit_bytes)
    assert got == prep.txt_documents(path) and len(got) == 300 and bad.total == 0


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
    bad = BadInput()
    units = plan_units([str(path)], 1000, unit_rows=1)
    for u in units:
        list(iter_documents(u, "text", bad))
    (loc,) = bad.locations["malformed_json"]
    last = units[-1]
    assert loc.startswith(f"{path}:+") and f"after byte {last.start}" in loc


def test_empty_file_is_one_empty_unit(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_bytes(b"")
    units = plan_units([str(tmp_path / "e.txt")], 10, 10)
    assert [(u.start, u.end) for u in units] == [(0, 0)]
    assert documents([str(tmp_path / "e.txt")])[0] == []


def test_globs_expand_sorted_and_in_spec_order(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text("x\n")
    got = expand_inputs([str(tmp_path / "c.jsonl"), str(tmp_path / "*.txt")])
    assert [Path(s).name for s, _, _ in got] == ["c.jsonl", "a.txt", "b.txt"]
    assert [k for _, k, _ in got] == ["jsonl", "txt", "txt"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.txt", "no such file or folder"),
        ("*.nothing", "no file matches"),
        ("data.csv", "unknown input type .csv"),
        ("plain_folder", "not a datasets save_to_disk folder"),
    ],
)
def test_bad_specs_are_user_errors(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "plain_folder").mkdir()
    with pytest.raises(UserError, match=message):
        expand_inputs([str(tmp_path / spec)])
