"""Data-prep throughput and memory per corpus layout (``python -m data_prep.tools.bench --layouts``).

Builds, from the bundled Austen novels, about ``--mb`` MB (uncompressed) of each layout:

- ``blank_txt``: one .txt of blank-line-separated paragraphs;
- ``sentence_txt``: one .txt with a sentence per line and no blank line (BooksCorpus's layout),
  read with ``--txt-docs line``;
- ``jsonl_zst``: one .jsonl.zst (zstd, one frame) of paragraphs;
- ``small_files``: 5,000 .txt files (``--txt-docs file``: a book per file);
- ``wiki_dump``: a ``pages-articles-multistream.xml.bz2`` with its index (data_prep.tools.synth:
  real wikitext with templates, refs, tables, categories, redirects, talk pages).

and times, in subprocesses, the naive baseline (one process, the layout read the obvious way:
``readlines`` / a zstd stream and ``json.loads`` / ``bz2.open`` and the same wikitext cleaner;
then HF ``binarized_data.py``'s per-line ``tokenizer.encode``, all ids kept in memory) and
``build_shards --workers W``. For each it prints one JSON line: seconds, MB (uncompressed input),
MB/s, tokens, tokens/s, speedup over the naive run, CPU seconds (all processes, and the main
process alone) and the peak RSS of the main process and of the largest worker (VmHWM from /proc,
read every 50 ms while the job runs). On a shared machine the wall times depend on the load
(printed first); the CPU seconds much less.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]

LAYOUTS = ("blank_txt", "sentence_txt", "jsonl_zst", "small_files", "wiki_dump")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


# --- corpora ----------------------------------------------------------------------------------
def _paragraphs() -> list[str]:
    from data_prep.tools.synth import austen_paragraphs

    return austen_paragraphs()


def _repeat(paras: list[str], nbytes: int, start: int = 0) -> Iterator[str]:
    written, i = 0, start
    while written < nbytes:
        para = paras[i % len(paras)]
        written += len(para.encode()) + 2
        i += 1
        yield para


def make_layout(name: str, folder: Path, mb: float) -> tuple[list[str], list[str], float]:
    """Write one layout; (inputs, extra build_shards flags, uncompressed MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    nbytes = int(mb * 1e6)
    paras = _paragraphs()
    if name == "blank_txt":
        path = folder / "corpus.txt"
        path.write_text("".join(p + "\n\n" for p in _repeat(paras, nbytes)))
        return [str(path)], [], path.stat().st_size / 1e6
    if name == "sentence_txt":
        path = folder / "books_large.txt"
        with open(path, "w") as fh:
            for p in _repeat(paras, nbytes):
                fh.write("\n".join(SENTENCE_END.split(p)) + "\n")
        return [str(path)], ["--txt-docs", "line"], path.stat().st_size / 1e6
    if name == "jsonl_zst":
        import zstandard

        data = "".join(json.dumps({"text": p}) + "\n" for p in _repeat(paras, nbytes)).encode()
        path = folder / "corpus.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
        return [str(path)], [], len(data) / 1e6
    if name == "small_files":
        per = nbytes // 5000
        for i in range(5000):
            sub = folder / f"{i // 1000:02d}"
            sub.mkdir(exist_ok=True)
            text = "".join(p + "\n\n" for p in _repeat(paras, per, start=i * 37))
            (sub / f"book-{i:05d}.txt").write_text(text)
        return [str(folder)], ["--txt-docs", "file"], nbytes / 1e6
    if name == "wiki_dump":
        from data_prep.tools.synth import Article, make_pages, write_dump

        pages = [p.page if isinstance(p, Article) else p for p in make_pages(int(nbytes * 0.93))]
        path = folder / "enwiki-20240501-pages-articles-multistream.xml.bz2"
        _, xml_bytes = write_dump(path, pages)
        return [str(path)], [], xml_bytes / 1e6
    raise ValueError(name)


# --- the naive baseline (run in a subprocess: python -m data_prep.tools.bench_layouts LAYOUT ...) ----
def _texts(layout: str, inputs: list[str]) -> Iterator[str]:
    """The layout's lines / documents, read the obvious way, one process."""
    if layout in ("blank_txt", "sentence_txt", "small_files"):
        files = (
            inputs if layout != "small_files" else sorted(map(str, Path(inputs[0]).rglob("*.txt")))
        )
        for path in files:
            with open(path, encoding="utf-8") as fh:
                yield from fh.readlines()  # binarized_data.py
    elif layout == "jsonl_zst":
        import zstandard

        with open(inputs[0], "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            for line in io.TextIOWrapper(reader, encoding="utf-8"):
                yield json.loads(line)["text"]
    else:
        from data_prep.sources.units import DocStats
        from data_prep.sources.wiki import xml_documents

        stats, tail = DocStats(), b""
        with bz2.open(inputs[0], "rb") as fh:
            while chunk := fh.read(1 << 22):
                data = tail + chunk
                cut = data.rfind(b"</page>") + len(b"</page>") if b"</page>" in data else 0
                for doc in xml_documents(data[:cut], str, stats):
                    yield from doc.split("\n")
                tail = data[cut:]


def naive(layout: str, tokenizer: str, inputs: list[str]) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer, use_fast=True)
    bos, sep = tok.cls_token, tok.sep_token
    rslt: list[list[int]] = []
    for text in _texts(layout, inputs):
        rslt.append(tok.encode(f"{bos} {text.strip()} {sep}", add_special_tokens=False))
    arrays = [np.array(d, dtype=np.uint16) for d in rslt]
    print(json.dumps({"tokens": int(sum(len(a) for a in arrays))}))


# --- measuring --------------------------------------------------------------------------------
def _vmhwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Watched:
    """A finished run: wall and CPU seconds, stdout, peak RSS of the main process and of each
    child (bytes), CPU seconds of the main process (the rest of ``cpu`` is its children's)."""

    seconds: float
    cpu: float
    out: str
    peak_main: int
    peak_children: list[int]
    cpu_main: float


def run_watched(cmd: list[str], env: dict[str, str], cwd: Path) -> Watched:
    """Run ``cmd``, reading its and its children's VmHWM and CPU time every 50 ms."""
    peaks: dict[int, int] = {}
    cpu_main = [0.0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in [proc.pid, *_children(proc.pid)]:
                peaks[pid] = max(peaks.get(pid, 0), _vmhwm(pid))
            cpu_main[0] = max(cpu_main[0], _cpu_seconds(proc.pid))
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {tail[0]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    main = peaks.pop(proc.pid, 0)
    return Watched(seconds, cpu, out, main, list(peaks.values()), min(cpu_main[0], cpu))


def bench_layout(
    name: str,
    work: Path,
    mb: float,
    tokenizer: str,
    workers: int,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Make the layout, run the naive baseline and build_shards on it, emit one row each."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    py = sys.executable
    t0 = time.perf_counter()
    inputs, flags, in_mb = make_layout(name, work / name, mb)
    files = [f for i in map(Path, inputs) for f in ([i] if i.is_file() else i.rglob("*"))]
    on_disk = sum(f.stat().st_size for f in files if f.is_file())
    made = time.perf_counter() - t0
    print(
        f"# {name}: {in_mb:.1f} MB, {on_disk / 1e6:.1f} MB on disk, made in {made:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    naive_cmd = [py, "-m", "data_prep.tools.bench_layouts", name, tokenizer, *inputs]
    run = run_watched(naive_cmd, env, REPO)
    tokens = json.loads(run.out.strip().splitlines()[-1])["tokens"]
    base = run.seconds
    emit(_row(name, "naive", run, in_mb, tokens, base, 1))
    out_dir = work / f"{name}-shards"
    cmd = [py, "-m", "data_prep.build_shards", "--input", *inputs, *flags, "--tokenizer", tokenizer]
    cmd += ["--seq-len", "128", "--output", str(out_dir), "--workers", str(workers), "--quiet"]
    run = run_watched(cmd, env, REPO)
    tokens = sum(split.num_tokens for split in load_manifest(out_dir).splits.values())
    units = len(json.loads((out_dir / "prep_plan.json").read_text())["units"])
    row = _row(name, f"build_shards_w{workers}", run, in_mb, tokens, base, workers, units=units)
    emit(row)


def _row(
    layout: str,
    name: str,
    run: Watched,
    mb: float,
    tokens: int,
    base: float,
    workers: int,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "layout": layout,
        "name": name,
        "workers": workers,
        "seconds": round(run.seconds, 2),
        "mb": round(mb, 1),
        "mb_per_s": round(mb / run.seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / run.seconds),
        "speedup_vs_naive": round(base / run.seconds, 2),
        "cpu_s": round(run.cpu, 1),
        "cpu_main_s": round(run.cpu_main, 1),
        "peak_rss_main_mb": round(run.peak_main / 1e6),
        "peak_rss_worker_mb": round(max(run.peak_children) / 1e6) if run.peak_children else None,
        **extra,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'layout':<13}{'run':<16}{'MB':>6}{'s':>7}{'MB/s':>7}{'tok/s':>10}{'x naive':>8}"
        f"{'CPU s':>7}{'main':>6}{'RSS main':>9}{'worker':>7}"
    )
    print("\n" + head, file=sys.stderr)
    for r in rows:
        worker = f"{r['peak_rss_worker_mb']}" if r["peak_rss_worker_mb"] else "-"
        print(
            f"{r['layout']:<13}{r['name']:<16}{r['mb']:>6.0f}{r['seconds']:>7.1f}"
            f"{r['mb_per_s']:>7.2f}{r['tokens_per_s']:>10,}{r['speedup_vs_naive']:>7.2f}x"
            f"{r['cpu_s']:>7.1f}{r['cpu_main_s']:>6.1f}{r['peak_rss_main_mb']:>9}{worker:>7}",
            file=sys.stderr,
        )


if __name__ == "__main__":  # the naive baseline's subprocess: LAYOUT TOKENIZER INPUT ...
    naive(sys.argv[1], sys.argv[2], sys.argv[3:])
