"""End-to-end tests of data_prep.build_shards: exact round trips (our reader and megatron-core's),
determinism across workers and array tasks, byte-range units, int32 ids, SentencePiece, every
input kind, bad input, user errors, and restart after an interruption."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
AUSTEN = REPO / "data_prep" / "corpus" / "austen"
BERT = REPO / "tests" / "assets" / "bert-base-uncased"


def texts_of(paths: list[Path], prep: Any) -> list[str]:
    return [t for p in paths for t in prep.txt_documents(p)]


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".bin", ".idx"))


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if ".tmp" in p.name)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI failed as a user error: exit 2, one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("data_prep.build_shards: error: ")
    return lines[0]


def austen_text(n_bytes: int) -> bytes:
    """About ``n_bytes`` of the novels, cut after a blank line."""
    text = b"\n\n".join(gzip.decompress(p.read_bytes()) for p in sorted(AUSTEN.glob("*.txt.gz")))
    return text[: text.index(b"\n\n", n_bytes) + 2]


# --- round trips ------------------------------------------------------------------------------
def test_round_trip_pack_full(
    small_data_dir: Path, small_corpus: list[Path], wordpiece_tokenizer: Path, prep: Any
) -> None:
    texts = texts_of(small_corpus, prep)
    manifest = prep.check_round_trip(small_data_dir, texts, wordpiece_tokenizer, megatron=True)
    expected = prep.expected(texts, wordpiece_tokenizer, 1234, 0.05)
    assert manifest["stats"]["documents"] == {s: len(expected[s]) for s in ("train", "valid")}
    assert len(expected["valid"]) >= 10, "the valid split should not be empty"
    assert manifest["dtype"] == "uint16" and manifest["seq_len"] == 64
    assert [] in expected["train"] + expected["valid"], "the 0-token document should be there"


def test_round_trip_pack_doc(
    tmp_path: Path, small_corpus: list[Path], wordpiece_tokenizer: Path, prep: Any
) -> None:
    out = tmp_path / "doc"
    prep.build(
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--seq-len", "48",
        "--output", out, "--workers", "2", "--pack", "doc", "--valid-fraction", "0.05", "--seed", "7",
    )  # fmt: skip
    prep.check_round_trip(out, texts_of(small_corpus, prep), wordpiece_tokenizer, megatron=True)


@pytest.mark.parametrize("pack", ["full", "doc"])
def test_round_trip_two_novels_bert_uncased(tmp_path: Path, prep: Any, pack: str) -> None:
    inputs = [AUSTEN / "persuasion.txt.gz", AUSTEN / "northangerabbey.txt.gz"]
    prep.build(
        "--input", *inputs, "--tokenizer", BERT, "--seq-len", "128", "--output", tmp_path / "d",
        "--workers", "2", "--pack", pack,
    )  # fmt: skip
    prep.check_round_trip(tmp_path / "d", texts_of(inputs, prep), BERT, megatron=True)


# --- determinism ------------------------------------------------------------------------------
def test_workers_1_and_2_write_identical_bytes(
    small_data_dir: Path,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    tmp_path: Path,
    prep: Any,
) -> None:
    out = tmp_path / "w2"
    prep.build(
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--workers", "2", "--valid-fraction", "0.05", "--unit-max-files", "1",
    )  # fmt: skip
    assert prep.tree(out) == prep.tree(small_data_dir)  # every file, manifest and parts included


def test_array_split_equals_local_run(
    small_data_dir: Path,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    tmp_path: Path,
    prep: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "array"
    common = [
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--workers", "1", "--valid-fraction", "0.05", "--num-shards", "2",
        "--unit-max-files", "1",
    ]  # fmt: skip
    prep.build(*common, "--shard-index", "1")
    assert not (out / "manifest.json").exists()
    with pytest.raises(SystemExit) as exc:  # task 0 has not run yet
        prep.build("--output", out, "--finalize")
    assert exc.value.code == 2
    assert "2 of 3 units are not finished (0, 2)" in capsys.readouterr().err
    prep.build(*common, "--shard-index", "0")
    prep.build("--output", out, "--finalize")
    assert prep.tree(out) == prep.tree(small_data_dir)


def test_slurm_array_environment_picks_the_task(
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    tmp_path: Path,
    prep: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "slurm"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")  # task index 1 of 3: unit 1 only
    prep.build(
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--num-shards", "3", "--unit-max-files", "1",
    )  # fmt: skip
    assert sorted(p.name for p in (out / "parts").glob("unit-*.json")) == ["unit-00001.json"]


# --- byte-range units -------------------------------------------------------------------------
def test_byte_range_units_round_trip_and_determinism(
    tmp_path: Path, wordpiece_tokenizer: Path, prep: Any
) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(austen_text(2_500_000))
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"w{workers}"
        prep.build(
            "--input", big, "--tokenizer", wordpiece_tokenizer, "--seq-len", "128",
            "--output", outs[workers], "--workers", str(workers), "--unit-size-mb", "1",
        )  # fmt: skip
    plan = json.loads((outs[1] / "prep_plan.json").read_text())
    ranges = [(u["start"], u["end"]) for u in plan["units"]]
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == big.stat().st_size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(len(list((outs[1] / "train").glob(f"{i:05d}-*.bin"))) == 1 for i in range(3))
    prep.check_round_trip(outs[1], prep.txt_documents(big), wordpiece_tokenizer)
    assert prep.tree(outs[1]) == prep.tree(outs[2])


def test_shards_rotate_past_max_shard_tokens(
    tmp_path: Path, small_corpus: list[Path], wordpiece_tokenizer: Path, prep: Any
) -> None:
    out = tmp_path / "rot"
    prep.build(
        "--input", small_corpus[0], "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--max-shard-tokens", "5000",
    )  # fmt: skip
    manifest = prep.check_round_trip(out, prep.txt_documents(small_corpus[0]), wordpiece_tokenizer)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 3
    assert [s["path"] for s in shards] == [f"train/00000-{k:03d}" for k in range(len(shards))]
    assert all(s["num_tokens"] >= 5000 for s in shards[:-1])


# --- tokenizers -------------------------------------------------------------------------------
WORDS = ["the", "of", "and", "to", "a", "in", "was", "her", "it", "i", "he", "that", "she", "not"]


def make_big_vocab_tokenizer(out: Path) -> int:
    """A real fast tokenizer (WordLevel) of 70,021 entries: specials, words, tok00000..tok69999."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = WORDS
    vocab = [*specials, *words, ",", ".", *(f"tok{i:05d}" for i in range(70_000))]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
    }
    BertTokenizerFast(tokenizer_object=tok, mask_token="[MASK]", **special).save_pretrained(
        str(out)
    )
    return len(vocab)


def test_int32_ids_for_a_vocabulary_past_65536(tmp_path: Path, prep: Any) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    vocab_size = make_big_vocab_tokenizer(tmp_path / "tok")
    rng = np.random.default_rng(0)
    words = WORDS
    docs = []
    for _ in range(300):
        n = int(rng.integers(1, 60))
        high = [f"tok{int(i):05d}" for i in rng.integers(65_000, 70_000, size=n)]
        low = [str(w) for w in rng.choice(words, size=n)]
        docs.append(" ".join(w for pair in zip(high, low) for w in pair) + " .")
    corpus = tmp_path / "high.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "d"
    prep.build(
        "--input", corpus, "--tokenizer", tmp_path / "tok", "--seq-len", "32", "--output", out
    )
    manifest = prep.check_round_trip(out, docs, tmp_path / "tok", megatron=True)
    assert manifest["vocab_size"] == vocab_size and manifest["dtype"] == "int32"
    prefix = out / manifest["splits"]["train"]["shards"][0]["path"]
    assert Path(f"{prefix}.idx").read_bytes()[9 + 8] == 4  # the dtype code of int32
    ds = IndexedDataset(str(prefix), multimodal=False, mmap=True)
    ids = np.concatenate([ds[i] for i in range(len(ds))])
    assert ds[0].dtype == np.int32 and ids.max() > 65_535 and (ids > 65_535).sum() > 1000
    assert sum(manifest["token_counts"][65_536:]) > 1000


def test_sentencepiece_round_trip(tmp_path: Path, small_corpus: list[Path], prep: Any) -> None:
    from data_prep import train_tokenizer

    train_tokenizer.main(
        ["--input", *map(str, small_corpus[:2]), "--output", str(tmp_path / "spm"),
         "--kind", "sentencepiece", "--vocab-size", "1000"]
    )  # fmt: skip
    model = tmp_path / "spm" / "spm.model"
    out = tmp_path / "d"
    prep.build(
        "--input",
        *small_corpus,
        "--tokenizer",
        model,
        "--seq-len",
        "64",
        "--output",
        out,
        "--pack",
        "doc",
    )
    manifest = prep.check_round_trip(out, texts_of(small_corpus, prep), model, megatron=True)
    assert manifest["tokenizer"]["kind"] == "sentencepiece"
    assert manifest["special_ids"]["cls"] == 2 and manifest["special_ids"]["sep"] == 3


# --- input kinds ------------------------------------------------------------------------------
def test_every_input_kind(tmp_path: Path, wordpiece_tokenizer: Path, prep: Any) -> None:
    """jsonl.gz, jsonl.zst, parquet, a save_to_disk folder and hf:LOCALDIR in one run (a
    subprocess, so the datasets cache and offline mode are this test's own)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    paragraphs = prep.txt_documents(AUSTEN / "persuasion.txt.gz")[:500]
    parts = [paragraphs[i::5] for i in range(5)]
    (tmp_path / "a.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in parts[0]).encode())
    )
    (tmp_path / "b.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"text": t, "n": 1}) + "\n" for t in parts[1]).encode()
        )
    )
    pq.write_table(pa.table({"text": parts[2]}), tmp_path / "c.parquet", row_group_size=17)
    datasets.Dataset.from_dict({"text": parts[3]}).save_to_disk(str(tmp_path / "d_saved"))
    (tmp_path / "e_hf").mkdir()
    (tmp_path / "e_hf" / "train.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in parts[4])
    )
    env = {
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    inputs = ["a.jsonl.gz", "b.jsonl.zst", "c.parquet", "d_saved", f"hf:{tmp_path / 'e_hf'}"]
    proc = prep.cli(
        "data_prep.build_shards", "--input", *(i if i.startswith("hf:") else tmp_path / i for i in inputs),
        "--tokenizer", wordpiece_tokenizer, "--seq-len", "64", "--output", tmp_path / "out",
        "--unit-rows", "40", "--quiet", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((tmp_path / "out" / "prep_plan.json").read_text())
    # small files grouped into one unit; the datasets cut at rows; hf:FOLDER read as its file
    assert [u["kind"] for u in plan["units"]] == ["group", "arrow", "arrow", "arrow", "jsonl"]
    assert [m[1:3] for m in plan["units"][0]["members"]] == [
        ["jsonl", "gz"],
        ["jsonl", "zst"],
        ["parquet", ""],
    ]
    prep.check_round_trip(tmp_path / "out", [t for p in parts for t in p], wordpiece_tokenizer)


# --- bad input and user errors ----------------------------------------------------------------
def write_bad_corpus(folder: Path) -> tuple[Path, Path, list[str]]:
    """A .txt and a .jsonl with 8 unusable documents among 200 good ones; the good texts."""
    folder.mkdir(parents=True, exist_ok=True)
    good = [f"good document number {i}, with some words." for i in range(200)]
    txt = folder / "bad.txt"
    blocks = [t.encode() for t in good[:100]]
    blocks[10] = b"undecodable \xff\xfe here"
    blocks[50] = b"also \xc3 bad"
    txt.write_bytes(b"\n\n".join(blocks) + b"\n")
    jl = folder / "bad.jsonl"
    lines = [json.dumps({"text": t}) for t in good[100:]]
    lines[3] = '{"text": "unterminated'
    lines[4] = '{"body": "no text field"}'
    lines[5] = '{"text": "   "}'
    lines[6] = "[1, 2, 3]"
    lines[7] = '{"text": null}'
    lines[8] = "{not json at all}"
    jl.write_text("\n".join(lines) + "\n")
    kept = [t for i, t in enumerate(good) if i not in (10, 50, 103, 104, 105, 106, 107, 108)]
    return txt, jl, kept


def test_bad_input_above_the_limit_fails_and_keeps_nothing(
    tmp_path: Path, wordpiece_tokenizer: Path, prep: Any
) -> None:
    txt, jl, kept = write_bad_corpus(tmp_path / "in")
    out = tmp_path / "out"
    args = [
        "--input",
        txt,
        jl,
        "--tokenizer",
        wordpiece_tokenizer,
        "--seq-len",
        "32",
        "--output",
        out,
        "--workers",
        "2",
    ]
    proc = prep.cli("data_prep.build_shards", *args, "--quiet")
    line = one_line_error(proc)
    assert "8 of 200 documents (4.00%) are unusable, above --max-bad-fraction 0.001" in line
    assert f"2 undecodable (first at {txt}:21, {txt}:101)" in line
    assert f"2 malformed_json (first at {jl}:4, {jl}:9)" in line
    assert f"3 missing_field (first at {jl}:5, {jl}:7, {jl}:8)" in line
    assert f"1 empty (first at {jl}:6)" in line
    assert shard_files(out) == [] and not (out / "manifest.json").exists()
    assert temporaries(out) == []
    report = json.loads((out / "bad_input.json").read_text())
    assert report["documents"] == 200 and sum(report["counts"].values()) == 8
    # allowed this time: the same folder is reused, the bad documents are reported and skipped
    proc = prep.cli("data_prep.build_shards", *args, "--max-bad-fraction", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 8 unusable document(s): 1 empty (first at" in proc.stdout
    manifest = prep.check_round_trip(out, kept, wordpiece_tokenizer)
    assert manifest["stats"]["bad"]["counts"] == {
        "undecodable": 2,
        "malformed_json": 2,
        "missing_field": 3,
        "empty": 1,
    }
    assert manifest["stats"]["bad"]["locations"]["undecodable"] == [f"{txt}:21", f"{txt}:101"]


def test_mostly_unusable_input_stops_early(
    tmp_path: Path, wordpiece_tokenizer: Path, prep: Any
) -> None:
    corpus = tmp_path / "wrong_field.jsonl"
    corpus.write_text(
        "".join(json.dumps({"body" if i % 3 else "text": f"doc {i}"}) + "\n" for i in range(1500))
    )
    out = tmp_path / "out"
    proc = prep.cli(
        "data_prep.build_shards", "--input", corpus, "--tokenizer", wordpiece_tokenizer,
        "--seq-len", "32", "--output", out, "--quiet",
    )  # fmt: skip
    line = one_line_error(proc)
    assert "of the first 1500 documents are unusable" in line and "--text-field" in line
    assert (
        shard_files(out) == [] and not (out / "manifest.json").exists() and temporaries(out) == []
    )


def test_missing_input_in_a_subprocess(
    tmp_path: Path, wordpiece_tokenizer: Path, prep: Any
) -> None:
    proc = prep.cli(
        "data_prep.build_shards", "--input", tmp_path / "nope.txt", "--tokenizer", wordpiece_tokenizer,
        "--seq-len", "128", "--output", tmp_path / "out",
    )  # fmt: skip
    assert f"{tmp_path / 'nope.txt'}: no such file or folder" in one_line_error(proc)
    assert not (tmp_path / "out").exists()


def _broken_tokenizer_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "broken_tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{ this is not a tokenizer")
    return folder


def _not_a_model(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.model"
    path.write_bytes(b"\x00\x01 not a sentencepiece model")
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_input", "no such file or folder"),
        ("empty_glob", "no file matches this pattern"),
        ("no_tokenizer", "tokenizer not found"),
        ("empty_tokenizer_folder", "no tokenizer.json, vocab.txt or vocab.json"),
        ("broken_tokenizer_json", "transformers cannot load this tokenizer folder"),
        ("not_a_spm_model", "not a readable SentencePiece model"),
        ("seq_len_4", "--seq-len 4 is too small"),
    ],
)
def test_user_errors_are_one_line(
    case: str,
    message: str,
    tmp_path: Path,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    prep: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty_folder").mkdir()
    inputs: list[Any] = [small_corpus[2]]
    tokenizer: Any = wordpiece_tokenizer
    seq_len = "64"
    if case == "missing_input":
        inputs = [small_corpus[2], tmp_path / "missing.txt"]
    elif case == "empty_glob":
        inputs = [tmp_path / "*.jsonl"]
    elif case == "no_tokenizer":
        tokenizer = tmp_path / "no_such_tokenizer"
    elif case == "empty_tokenizer_folder":
        tokenizer = tmp_path / "empty_folder"
    elif case == "broken_tokenizer_json":
        tokenizer = _broken_tokenizer_folder(tmp_path)
    elif case == "not_a_spm_model":
        tokenizer = _not_a_model(tmp_path)
    elif case == "seq_len_4":
        seq_len = "4"
    with pytest.raises(SystemExit) as exc:
        prep.build(
            "--input",
            *inputs,
            "--tokenizer",
            tokenizer,
            "--seq-len",
            seq_len,
            "--output",
            tmp_path / "out",
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_tokenizer_errors_in_a_subprocess(
    tmp_path: Path, small_corpus: list[Path], prep: Any
) -> None:
    for tokenizer, message in (
        (tmp_path / "nothing_here", "tokenizer not found"),
        (_broken_tokenizer_folder(tmp_path), "transformers cannot load"),
    ):
        proc = prep.cli(
            "data_prep.build_shards", "--input", small_corpus[2], "--tokenizer", tokenizer,
            "--seq-len", "64", "--output", tmp_path / "out",
        )  # fmt: skip
        assert message in one_line_error(proc)
    proc = prep.cli(
        "data_prep.build_shards", "--input", small_corpus[2], "--tokenizer", BERT, "--seq-len", "4",
        "--output", tmp_path / "out",
    )  # fmt: skip
    assert "--seq-len 4 is too small" in one_line_error(proc)


def test_rerun_with_other_settings_is_refused(
    small_data_dir: Path,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    tmp_path: Path,
    prep: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(small_data_dir, out)
    before = prep.tree(out)
    for change in (["--seq-len", "128"], ["--seq-len", "64", "--pack", "doc"]):
        with pytest.raises(SystemExit) as exc:
            prep.build(
                "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--output", out,
                "--valid-fraction", "0.05", "--unit-max-files", "1", *change,
            )  # fmt: skip
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds a data prep started with other settings" in err
        assert ("seq_len" in err) == ("128" in change) and ("pack" in err) == ("doc" in change)
    assert prep.tree(out) == before


# --- restart ----------------------------------------------------------------------------------
def test_rerun_redoes_only_the_unfinished_unit(
    small_data_dir: Path,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    tmp_path: Path,
    prep: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run killed inside unit 1: its marker and shards are missing, its temporaries remain."""
    out = tmp_path / "restart"
    shutil.copytree(small_data_dir, out)
    for path in [
        *(out / "parts").glob("unit-00001.*"),
        *out.glob("*/00001-*"),
        out / "manifest.json",
    ]:
        path.unlink()
    stale = [
        out / "train" / ".00001-000.bin.tmp-999999",
        out / "parts" / ".unit-00001.counts.npy.tmp-999999",
    ]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    kept = {p: p.stat().st_mtime_ns for p in [*out.glob("*/00000-*"), *out.glob("*/00002-*")]}
    time.sleep(0.01)
    prep.build(
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--workers", "2", "--valid-fraction", "0.05", "--unit-max-files", "1",
    )  # fmt: skip
    assert "skipping 2 finished unit(s) of 3" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "finished units were rewritten"
    assert temporaries(out) == []
    assert prep.tree(out) == prep.tree(small_data_dir)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_is_identical(tmp_path: Path, prep: Any) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(austen_text(3_500_000))  # 4 units of 1 MiB
    args = [
        "--input",
        str(big),
        "--tokenizer",
        str(BERT),
        "--seq-len",
        "128",
        "--unit-size-mb",
        "1",
        "--workers",
        "2",
        "--quiet",
    ]
    reference = tmp_path / "reference"
    assert prep.cli("data_prep.build_shards", *args, "--output", reference).returncode == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "data_prep.build_shards", *args, "--output", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stderr=subprocess.DEVNULL
    )
    marker = out / "parts" / "unit-00000.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    # kill it while it writes unit 1, so its temporary files are left behind
    while not temporaries(out / "train") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its tokenizer workers
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert marker.exists() and not (out / "manifest.json").exists()
    assert temporaries(out), "no temporary file at the kill: the cleanup goes untested"
    done = len(list((out / "parts").glob("unit-*.json")))
    assert done < 4
    rerun = prep.cli("data_prep.build_shards", *args, "--output", out)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipping {done} finished unit(s) of 4" in rerun.stderr
    assert temporaries(out) == []
    assert prep.tree(out) == prep.tree(reference)


# --- layouts of issue 13: many files, big compressed files, Wikipedia ---------------------------
def write_layouts(root: Path, prep: Any) -> list[Path]:
    """A .jsonl.zst of several units, a multistream dump with its index, a folder of 120 small
    book files (one with a long sentence-per-line chapter), a WikiExtractor folder."""
    import zstandard

    from data_prep.tools.synth import make_pages, write_dump, write_wikiextractor

    root.mkdir(parents=True, exist_ok=True)
    paras = prep.txt_documents(AUSTEN / "emma.txt.gz")
    jl = root / "big.jsonl.zst"
    lines = "".join(json.dumps({"text": t}) + "\n" for t in paras[:1500])
    jl.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pages = [p.page if hasattr(p, "page") else p for p in make_pages(200_000, seed=5)]
    write_dump(root / "enwiki-1-pages-articles-multistream.xml.bz2", pages, pages_per_stream=4)
    books = root / "books"
    books.mkdir()
    for i in range(120):
        (books / f"{i:03d}.txt").write_text("\n".join(paras[1500 + 3 * i : 1503 + 3 * i]) + "\n")
    (books / "999-long.txt").write_text(
        "".join(f"Sentence {i} of a long chapter.\n" for i in range(4000))
    )
    arts = [(i, f"T{i}", paras[2000 + i]) for i in range(200)]
    write_wikiextractor(root / "extracted", arts, file_bytes=2000)
    return [jl, root / "enwiki-1-pages-articles-multistream.xml.bz2", books, root / "extracted"]


def test_layouts_write_identical_bytes_whatever_the_workers_and_tasks(
    tmp_path: Path, wordpiece_tokenizer: Path, prep: Any
) -> None:
    inputs = write_layouts(tmp_path / "in", prep)
    common = [
        "--input", *inputs, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--unit-size-mb", "0.05", "--max-doc-mb", "0.05", "--txt-docs", "file",
    ]  # fmt: skip
    outs = {}
    for workers in ("1", "2"):
        outs[workers] = tmp_path / f"w{workers}"
        prep.build(*common, "--output", outs[workers], "--workers", workers)
    plan = json.loads((outs["1"] / "prep_plan.json").read_text())
    kinds = [u["kind"] for u in plan["units"]]
    assert kinds.count("jsonl") >= 2 and kinds.count("mwdump") >= 2 and "group" in kinds
    assert all(u["compression"] == "zst" for u in plan["units"] if u["kind"] == "jsonl")
    array = tmp_path / "array"
    for index in ("0", "1"):
        prep.build(
            *common,
            "--output",
            array,
            "--workers",
            "2",
            "--num-shards",
            "2",
            "--shard-index",
            index,
        )
    prep.build("--output", array, "--finalize")
    assert prep.tree(outs["1"]) == prep.tree(outs["2"]) == prep.tree(array)
    manifest = json.loads((outs["1"] / "manifest.json").read_text())
    stats = manifest["stats"]
    assert stats["cut_documents"] >= 2  # the 120 KB chapter, cut at 50 KB
    assert stats["skipped"]["redirect"] > 3 and stats["bad"]["counts"] == {}
    assert prep.cli("data_prep.verify", outs["1"]).returncode == 0


def test_cuts_are_reported_in_the_summary(
    tmp_path: Path, wordpiece_tokenizer: Path, prep: Any
) -> None:
    book = tmp_path / "sentences.txt"  # BooksCorpus's layout: a sentence per line, no blank line
    book.write_text("".join(f"Sentence {i} of the book, with a few words.\n" for i in range(20000)))
    for txt_docs, cuts in (("blank", True), ("line", False)):
        proc = prep.cli(
            "data_prep.build_shards", "--input", book, "--tokenizer", wordpiece_tokenizer,
            "--seq-len", "128", "--output", tmp_path / txt_docs, "--txt-docs", txt_docs,
            "--max-doc-mb", "0.1", "--quiet",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((tmp_path / txt_docs / "manifest.json").read_text())
        docs = sum(manifest["stats"]["documents"].values())
        if cuts:  # 900 KB in documents of at most 100 KB
            assert manifest["stats"]["cut_documents"] == docs - 1 and 9 <= docs <= 12
            assert f"cut {docs - 1} time(s) at line boundaries" in proc.stdout
        else:
            assert manifest["stats"]["cut_documents"] == 0 and docs == 20000
            assert "cut " not in proc.stdout


def test_bad_layouts_are_counted_then_refused_or_skipped(
    tmp_path: Path, wordpiece_tokenizer: Path, prep: Any
) -> None:
    """A dump with a broken stream, a WikiExtractor file with an unclosed <doc>, a folder with a
    binary file: above the limit one line and nothing kept; under it the job goes on."""
    from data_prep.sources.compressed import read_dump_index
    from data_prep.tools.synth import make_pages, write_dump

    dump = tmp_path / "enwiki-2-pages-articles-multistream.xml.bz2"
    pages = [p.page if hasattr(p, "page") else p for p in make_pages(60_000, seed=9)]
    index, _ = write_dump(dump, pages, pages_per_stream=5)
    broken = sorted(read_dump_index(index))[2]
    data = bytearray(dump.read_bytes())
    data[broken + 50 : broken + 80] = bytes(30)
    dump.write_bytes(bytes(data))
    extracted = tmp_path / "extracted" / "AA"
    extracted.mkdir(parents=True)
    (extracted / "wiki_00").write_text(
        '<doc id="1" url="u" title="A">\nA\n\nopen forever\n'
        + "".join(
            f'<doc id="{i}" url="u" title="B{i}">\nB{i}\n\nbody {i}\n</doc>\n' for i in range(2, 40)
        )
    )
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "book.txt").write_text("A book.\n")
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4\n" + bytes(100))
    args = [
        "--input", dump, tmp_path / "extracted", folder, "--tokenizer", wordpiece_tokenizer,
        "--seq-len", "32", "--output", tmp_path / "out", "--txt-docs", "file",
    ]  # fmt: skip
    line = one_line_error(prep.cli("data_prep.build_shards", *args, "--quiet"))
    assert f"100 broken_stream (first at {dump}:byte {broken})" in line
    assert f"1 unclosed_doc (first at {extracted / 'wiki_00'}:1)" in line
    assert f"1 binary (first at {folder / 'scan.pdf'}:byte 9)" in line
    assert shard_files(tmp_path / "out") == [] and not (tmp_path / "out" / "manifest.json").exists()
    proc = prep.cli("data_prep.build_shards", *args, "--max-bad-fraction", "0.9")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 102 unusable document(s)" in proc.stdout
    assert "left out on purpose (not documents): " in proc.stdout and " redirect" in proc.stdout
