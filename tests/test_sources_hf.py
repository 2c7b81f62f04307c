"""``hf:LOCAL_DIR[:CONFIG]`` as Hugging Face datasets lie on disk, offline: the data files are
found the way ``datasets.load_dataset`` finds them and read directly (no Arrow cache).

Layouts: ``wikimedia/wikipedia`` (``20231101.en/train-0000K-of-0000N.parquet`` with id, url,
title, text; with the README's ``configs`` and without a README), ``bookcorpus`` as its parquet
export (``plain_text/train/0000.parquet``) and as its original text files (one sentence per
line), and a folder of JSON lines. Run in a subprocess with a private HF cache, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, sys
from data_prep.errors import UserError
from data_prep.sources import DocStats, ReadOptions, iter_documents, plan_units
out = {}
for spec in sys.argv[1:]:
    try:
        units = plan_units([spec], 1 << 30, 2, txt_docs="blank")
        stats = DocStats()
        docs = [t for u in units for t in iter_documents(u, ReadOptions(), stats)]
        kinds = [u.kind if u.kind != "group" else [m[1] for m in u.members] for u in units]
        out[spec] = {"kinds": kinds, "docs": docs, "bad": stats.bad.counts}
    except UserError as exc:
        out[spec] = {"error": str(exc)}
print(json.dumps(out))
"""
WIKI_README = """---
language:
- en
- fr
configs:
- config_name: 20231101.en
  data_files:
  - split: train
    path: 20231101.en/train-*
- config_name: 20231101.fr
  data_files:
  - split: train
    path: 20231101.fr/train-*
---
# Wikipedia
"""


def wiki_rows(config: str, shard: int) -> dict[str, list[str]]:
    n = 3
    return {
        "id": [str(10 * shard + i) for i in range(n)],
        "url": [f"https://example.org/wiki?curid={10 * shard + i}" for i in range(n)],
        "title": [f"Article {shard}-{i}" for i in range(n)],
        "text": [f"{config} article {shard}-{i}.\n\nIts second paragraph." for i in range(n)],
    }


def write_layouts(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for folder, readme in (("wiki", True), ("wiki_no_readme", False)):
        for config in ("20231101.en", "20231101.fr"):
            (root / folder / config).mkdir(parents=True)
            for shard in range(2):
                name = f"train-{shard:05d}-of-00002.parquet"
                pq.write_table(pa.table(wiki_rows(config, shard)), root / folder / config / name)
        if readme:
            (root / folder / "README.md").write_text(WIKI_README)
    (root / "bookcorpus" / "plain_text" / "train").mkdir(parents=True)
    for k in range(2):
        rows = {"text": [f"sentence {k}-{i} of the books ." for i in range(4)]}
        pq.write_table(
            pa.table(rows), root / "bookcorpus" / "plain_text" / "train" / f"000{k}.parquet"
        )
    (root / "bookcorpus_txt").mkdir()
    for k in (1, 2):
        lines = "".join(f"books_large_p{k} sentence {i} .\n" for i in range(3))
        (root / "bookcorpus_txt" / f"books_large_p{k}.txt").write_text(lines)
    (root / "jsonl").mkdir()
    for k in range(2):
        text = "".join(json.dumps({"text": f"json {k}-{i}"}) + "\n" for i in range(2))
        (root / "jsonl" / f"part-{k}.jsonl").write_text(text)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hf_layouts")
    write_layouts(root)
    specs = [
        f"hf:{root / 'wiki'}:20231101.en",
        f"hf:{root / 'wiki_no_readme'}:20231101.en",
        f"hf:{root / 'wiki'}",
        f"hf:{root / 'bookcorpus'}",
        f"hf:{root / 'bookcorpus'}:plain_text",
        f"hf:{root / 'bookcorpus_txt'}",
        f"hf:{root / 'jsonl'}",
    ]
    env = {
        **os.environ,
        "HF_HOME": str(root / "hf_home"),
        "HF_DATASETS_CACHE": str(root / "hf_cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *specs],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"root": root, **{spec.split(str(root) + "/")[1]: v for spec, v in out.items()}}


def test_wikimedia_wikipedia_parquet(results: dict[str, Any]) -> None:
    got = results["wiki:20231101.en"]
    assert got["kinds"] == [["parquet", "parquet"]]  # two small files: one unit
    want = [t for shard in range(2) for t in wiki_rows("20231101.en", shard)["text"]]
    assert got["docs"] == want and got["bad"] == {}
    assert results["wiki_no_readme:20231101.en"]["docs"] == want  # CONFIG as a sub-folder
    assert "Config name is missing" in results["wiki"]["error"]
    assert not list((results["root"] / "hf_cache").rglob("*.arrow"))  # no Arrow cache was built


def test_bookcorpus_layouts(results: dict[str, Any]) -> None:
    want = [f"sentence {k}-{i} of the books ." for k in range(2) for i in range(4)]
    assert results["bookcorpus"]["docs"] == want
    assert results["bookcorpus:plain_text"]["docs"] == want
    text = results["bookcorpus_txt"]
    assert text["kinds"] == [["txt", "txt"]]
    # HF's text builder: a row per line, whatever --txt-docs says (blank here)
    assert text["docs"] == [f"books_large_p{k} sentence {i} ." for k in (1, 2) for i in range(3)]


def test_jsonl_folder(results: dict[str, Any]) -> None:
    assert results["jsonl"]["kinds"] == [["jsonl", "jsonl"]]
    assert results["jsonl"]["docs"] == [f"json {k}-{i}" for k in range(2) for i in range(2)]
