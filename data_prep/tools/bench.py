"""Data-prep throughput: build_shards against a naive per-line baseline, and the shard reader.

    python -m data_prep.tools.bench [--mb 16] [--tokenizer tests/assets/bert-base-uncased] [--json]
    python -m data_prep.tools.bench --layouts [LAYOUT ...] [--mb 100] [--workers 2]

Builds a corpus of about ``--mb`` MB by repeating the bundled Austen novels (decompressed into a
temporary folder, as ``--files`` plain .txt files), then measures in the same run:

- ``naive``: what Hugging Face's old ``examples/distillation/scripts/binarized_data.py`` does --
  one process reads every line, calls the fast ``BertTokenizer``'s ``encode`` once per line
  (``[CLS] line [SEP]``), keeps the lists, and pickles them as uint16 arrays at the end;
- ``build_shards_w1`` / ``build_shards_w2``: ``python -m data_prep.build_shards`` with
  ``--workers 1`` and ``2`` (start-up, tokenization, packing, writing, manifest);
- ``naive_read`` and ``reader``: iterating every sequence of the naive pickle, and of the
  train shards with ``IndexedReader`` (summing lengths and ids, so every byte is read).

Every measurement is the wall time of a whole subprocess (the two readers: in process), and is
printed as one JSON line: name, seconds, mb (input MB; for the readers, MB of token data),
mb_per_s, tokens (ids written, [CLS]/[SEP] included), tokens_per_s, speedup_vs_naive (the
readers: against ``naive_read``). Without ``--json`` a table follows. Not a test: it asserts
nothing except that both worker counts write the same bytes (``identical_to_w1``).

``--layouts`` measures each corpus layout instead (blank-line txt, sentence-per-line txt, one
.jsonl.zst, 5,000 small files, a multistream Wikipedia dump; ``--mb`` each, default 100): MB/s,
tokens/s and peak RSS of the main process and the largest worker, beside the naive baseline
(see :mod:`data_prep.tools.bench_layouts`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.errors import UserError, cli_main
from data_prep.tools.bench_layouts import LAYOUTS, bench_layout, print_table

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data_prep" / "corpus" / "austen"
DEFAULT_TOKENIZER = REPO / "tests" / "assets" / "bert-base-uncased"


def make_corpus(out: Path, mb: float, files: int) -> list[Path]:
    """Write about ``mb`` MB of repeated Austen text as ``files`` .txt files; their paths."""
    sources = sorted(CORPUS.glob("*.txt.gz"))
    if not sources:
        raise UserError(f"{CORPUS}: the bundled corpus is missing")
    text = b"\n\n".join(gzip.decompress(p.read_bytes()) for p in sources)
    paragraphs = [block.strip(b"\n") + b"\n\n" for block in text.split(b"\n\n") if block.strip()]
    per_file = max(1, int(mb * 1e6 / files))
    paths = []
    for i in range(files):
        path = out / f"corpus-{i:02d}.txt"
        j = i * len(paragraphs) // files  # each file starts elsewhere in the novels
        written = 0
        with open(path, "wb") as fh:
            while written < per_file:
                block = paragraphs[j % len(paragraphs)]
                fh.write(block)
                written += len(block)
                j += 1
        paths.append(path)
    return paths


def naive_baseline(tokenizer: str, files: list[str], out: str) -> None:
    """The per-line loop of HF's old binarized_data.py (run in a subprocess by the bench)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer, use_fast=True)
    bos, sep = tok.cls_token, tok.sep_token
    rslt: list[list[int]] = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            data = fh.readlines()
        for text in data:
            text = f"{bos} {text.strip()} {sep}"
            rslt.append(tok.encode(text, add_special_tokens=False))
    dtype = np.uint16 if len(tok) < 1 << 16 else np.int32
    rslt_ = [np.array(d, dtype=dtype) for d in rslt]
    with open(out, "wb") as handle:
        pickle.dump(rslt_, handle, protocol=pickle.HIGHEST_PROTOCOL)
    print(json.dumps({"tokens": int(sum(len(d) for d in rslt_))}))


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {tail[0]}")
    return seconds, proc.stdout


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _tokens(data_dir: Path) -> int:
    from data_prep.manifest import load_manifest

    return sum(split.num_tokens for split in load_manifest(data_dir).splits.values())


def read_shards(data_dir: Path) -> tuple[int, int, int]:
    """(tokens, sum of ids, bytes) of every train sequence, read one by one."""
    from data_prep.indexed import IndexedReader, bin_path
    from data_prep.manifest import load_manifest

    tokens = checksum = nbytes = 0
    for shard in load_manifest(data_dir).train.shards:
        reader = IndexedReader(shard.prefix(data_dir))
        for i in range(len(reader)):
            seq = reader[i]
            tokens += seq.size
            checksum += int(seq.sum(dtype=np.int64))
        nbytes += bin_path(shard.prefix(data_dir)).stat().st_size
    return tokens, checksum, nbytes


def read_pickle(path: Path) -> tuple[int, int, int]:
    """(tokens, sum of ids, bytes of token data) of the naive pickle, read one by one."""
    with open(path, "rb") as fh:
        seqs = pickle.load(fh)
    tokens = checksum = nbytes = 0
    for seq in seqs:
        tokens += seq.size
        checksum += int(seq.sum(dtype=np.int64))
        nbytes += seq.nbytes
    return tokens, checksum, nbytes


def _record(
    name: str, seconds: float, mb: float, tokens: int, base: float | None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "seconds": round(seconds, 3),
        "mb": round(mb, 2),
        "mb_per_s": round(mb / seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds),
        "speedup_vs_naive": round(base / seconds, 2) if base else None,
        **extra,
    }


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.tools.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--mb", type=float, help="corpus size in MB (default 16; with --layouts 100 each)"
    )
    p.add_argument(
        "--layouts",
        nargs="*",
        metavar="LAYOUT",
        help=f"measure corpus layouts instead (default all: {' '.join(LAYOUTS)})",
    )
    p.add_argument("--workers", type=int, default=2, help="build_shards workers for --layouts")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer folder")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--files", type=int, default=8, help="number of .txt files (default 8)")
    p.add_argument("--json", action="store_true", help="JSON lines only, no table")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    p.add_argument("--naive-baseline", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.naive_baseline:  # the subprocess side: OUT FILE ...
        naive_baseline(args.tokenizer, args.naive_baseline[1:], args.naive_baseline[0])
        return
    if args.layouts is not None:
        layouts_main(args)
        return
    args.mb = 16 if args.mb is None else args.mb
    if args.mb <= 0 or args.files < 1:
        raise UserError("--mb must be positive and --files at least 1")
    if not Path(args.tokenizer).exists():
        raise UserError(f"{args.tokenizer}: tokenizer not found")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="distil-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    py = sys.executable
    results: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        results.append(rec)
        print(json.dumps(rec), flush=True)

    try:
        corpus = work / "corpus"
        shutil.rmtree(corpus, ignore_errors=True)
        corpus.mkdir()
        files = make_corpus(corpus, args.mb, args.files)
        mb = sum(f.stat().st_size for f in files) / 1e6
        pkl = work / "naive.pkl"
        cmd = [py, "-m", "data_prep.tools.bench", "--tokenizer", args.tokenizer, "--naive-baseline"]
        seconds, out = _run([*cmd, str(pkl), *map(str, files)], env)
        naive_s = seconds
        emit(
            _record(
                "naive",
                seconds,
                mb,
                json.loads(out.strip().splitlines()[-1])["tokens"],
                naive_s,
                workers=1,
            )
        )
        digests = {}
        for workers in (1, 2):
            out_dir = work / f"shards-w{workers}"
            shutil.rmtree(out_dir, ignore_errors=True)
            cmd = [py, "-m", "data_prep.build_shards", "--input", *map(str, files)]
            cmd += ["--tokenizer", args.tokenizer, "--seq-len", str(args.seq_len)]
            cmd += ["--output", str(out_dir), "--workers", str(workers), "--quiet"]
            seconds, _ = _run(cmd, env)
            tokens = _tokens(out_dir)
            digests[workers] = _tree_digest(out_dir)
            extra: dict[str, Any] = {"workers": workers}
            if workers > 1:
                extra["identical_to_w1"] = digests[workers] == digests[1]
            emit(_record(f"build_shards_w{workers}", seconds, mb, tokens, naive_s, **extra))
        start = time.perf_counter()
        tokens, _, nbytes = read_pickle(pkl)
        naive_read_s = time.perf_counter() - start
        emit(_record("naive_read", naive_read_s, nbytes / 1e6, tokens, naive_read_s))
        start = time.perf_counter()
        tokens, _, nbytes = read_shards(work / "shards-w1")
        seconds = time.perf_counter() - start
        emit(_record("reader", seconds, nbytes / 1e6, tokens, naive_read_s))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.json:
        print(
            f"\n{'measurement':<18}{'seconds':>9}{'MB/s':>9}{'tokens/s':>12}{'speedup':>9}",
            file=sys.stderr,
        )
        for r in results:
            speed = f"{r['speedup_vs_naive']:.2f}x" if r["speedup_vs_naive"] else "-"
            print(
                f"{r['name']:<18}{r['seconds']:>9.2f}{r['mb_per_s']:>9.2f}{r['tokens_per_s']:>12,}{speed:>9}",
                file=sys.stderr,
            )


def layouts_main(args: argparse.Namespace) -> None:
    unknown = sorted(set(args.layouts) - set(LAYOUTS))
    if unknown:
        raise UserError(f"unknown layout {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}")
    mb = 100 if args.mb is None else args.mb
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="distil-bench-"))
    rows: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        rows.append(rec)
        print(json.dumps(rec), flush=True)

    load = os.getloadavg()
    print(
        f"# load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    try:
        for name in args.layouts or LAYOUTS:
            bench_layout(name, work, mb, args.tokenizer, args.workers, emit)
            if not args.keep:
                shutil.rmtree(work / name, ignore_errors=True)
                shutil.rmtree(work / f"{name}-shards", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.json:
        print_table(rows)


if __name__ == "__main__":
    main()
