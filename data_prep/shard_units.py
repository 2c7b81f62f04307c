"""Turning work units into committed shards: the tokenizer workers and the main process's packing.

For each unit the main process reads pieces of about 1 MB of whole records
(:class:`~data_prep.sources.UnitReader`) and hands them to ``--workers`` processes, which turn
them into documents, pick each document's split by a keyed hash of its text (so duplicates never
straddle train and valid) and tokenize them; the main process packs the ids in order and streams
them into ``DATA_DIR/{train,valid}/UNIT-K.bin/.idx``. A unit is finished when
``DATA_DIR/parts/unit-UNIT.json`` exists: a rerun skips finished units, and shards are only ever
complete under their final names. Results come back in submission order, so the bytes written
never depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import atomic_open
from data_prep.errors import UserError
from data_prep.indexed import IndexedWriter, ShardInfo, bin_path, idx_path, token_dtype_for_vocab
from data_prep.manifest import SPLITS
from data_prep.packing import Packer
from data_prep.progress import Progress
from data_prep.restartable import RestartableJob
from data_prep.sources import DocStats, Piece, ReadOptions, UnitReader, WorkUnit, piece_documents
from data_prep.tokenizer import TextTokenizer

PARTS_DIR = "parts"
PLAN_NAME = "prep_plan.json"
PLAN_FORMAT = "distil-prep-plan"
PLAN_VERSION = 1
EARLY_ABORT_DOCS = 1000
ENCODE_CHARS = 1 << 18  # text per tokenizer call: bounds the tokenizer's per-token objects


@dataclass(frozen=True)
class JobSettings:
    """What the workers and the packer need: split, reading and packing settings."""

    seq_len: int
    pack: str
    valid_fraction: float
    seed: int
    max_shard_tokens: int
    read: ReadOptions


# --- the worker side --------------------------------------------------------------------------
_TOKENIZER: TextTokenizer | None = None
_SPLIT_KEY = b""
_VALID_THRESHOLD = 0
_READ = ReadOptions()

Result = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, DocStats]


def _set_worker_state(tok: TextTokenizer, settings: JobSettings) -> None:
    global _TOKENIZER, _SPLIT_KEY, _VALID_THRESHOLD, _READ
    _TOKENIZER = tok
    _SPLIT_KEY = str(settings.seed).encode()
    _VALID_THRESHOLD = int(settings.valid_fraction * 2**64)
    _READ = settings.read


def is_valid_document(text: str, key: bytes, threshold: int) -> bool:
    """The split of a document: a keyed hash of its text, below ``fraction * 2**64`` is valid."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") < threshold


def _encode(
    tok: TextTokenizer, texts: list[str], dtype: type[np.number]
) -> tuple[np.ndarray, np.ndarray]:
    """encode_concat in calls of about ENCODE_CHARS characters each."""
    flats, lengths = [], []
    start = size = 0
    for i, t in enumerate(texts):
        size += len(t)
        if size >= ENCODE_CHARS or i == len(texts) - 1:
            f, n = tok.encode_concat(texts[start : i + 1], dtype)
            flats.append(f)
            lengths.append(n)
            start, size = i + 1, 0
    if not flats:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
    return np.concatenate(flats), np.concatenate(lengths)


def _process_pieces(pieces: list[Piece]) -> Result:
    """Documents of the pieces, tokenized: ids, lengths, valid flags, train token counts,
    UTF-8 bytes, and the reading stats (bad, skipped, cut documents)."""
    assert _TOKENIZER is not None
    tok = _TOKENIZER
    stats = DocStats()
    texts = [t for p in pieces for t in piece_documents(p, _READ, stats)]
    dtype = token_dtype_for_vocab(tok.vocab_size)
    flat, lengths = _encode(tok, texts, dtype)
    valid = np.fromiter(
        (is_valid_document(t, _SPLIT_KEY, _VALID_THRESHOLD) for t in texts),
        dtype=bool,
        count=len(texts),
    )
    keep = np.repeat(~valid, lengths) if valid.any() else slice(None)
    counts = np.bincount(flat[keep], minlength=tok.vocab_size).astype(np.int64)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return flat, lengths, valid, counts, nbytes, stats


# --- the main side ----------------------------------------------------------------------------
class _RotatingShards:
    """Writes one split of one unit, starting a new shard past ``max_tokens`` tokens."""

    def __init__(
        self, data_dir: Path, split: str, unit: int, dtype: type[np.number], max_tokens: int
    ):
        self.data_dir, self.split, self.unit = data_dir, split, unit
        self.dtype, self.max_tokens = dtype, max_tokens
        self.writer: IndexedWriter | None = None
        self.done: list[ShardInfo] = []

    def add(self, seq: np.ndarray) -> None:
        if self.writer is None:
            prefix = self.data_dir / self.split / f"{self.unit:05d}-{len(self.done):03d}"
            self.writer = IndexedWriter(prefix, self.dtype)
        self.writer.add(seq)
        if self.writer.num_tokens >= self.max_tokens:
            self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.done.append(self.writer.finalize())
            self.writer = None

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return [
            {
                "path": os.path.relpath(s.prefix, self.data_dir),
                "num_sequences": s.num_sequences,
                "num_tokens": s.num_tokens,
                "sha256_bin": s.sha256_bin,
                "sha256_idx": s.sha256_idx,
            }
            for s in self.done
        ]

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class UnitJob:
    """Packing and writing state of the unit being processed."""

    def __init__(self, unit: WorkUnit, data_dir: Path, settings: JobSettings, tok: TextTokenizer):
        self.unit = unit
        dtype = token_dtype_for_vocab(tok.vocab_size)
        sid = tok.special_ids
        self.packers = {
            s: Packer(settings.seq_len, sid.cls, sid.sep, settings.pack, dtype) for s in SPLITS
        }
        self.shards = {
            s: _RotatingShards(data_dir, s, unit.index, dtype, settings.max_shard_tokens)
            for s in SPLITS
        }
        self.counts = np.zeros(tok.vocab_size, dtype=np.int64)
        self.docs = dict.fromkeys(SPLITS, 0)
        self.stats = DocStats()
        self.nbytes = 0

    def add(self, result: Result) -> int:
        flat, lengths, valid, counts, nbytes, stats = result
        self.counts += counts
        self.nbytes += nbytes
        self.stats.merge(stats)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        for start, end, is_valid in zip(starts.tolist(), ends.tolist(), valid.tolist()):
            split = "valid" if is_valid else "train"
            self.docs[split] += 1
            for seq in self.packers[split].add(flat[start:end]):
                self.shards[split].add(seq)
        return int(flat.size)

    def commit(self, data_dir: Path) -> dict[str, Any]:
        for split in SPLITS:
            for seq in self.packers[split].flush():
                self.shards[split].add(seq)
        splits = {s: self.shards[s].finish() for s in SPLITS}
        record = {
            "unit": self.unit.to_json(),
            "splits": splits,
            "documents": self.docs,
            "bad": self.stats.bad.to_json(),
            "skipped": self.stats.skipped,
            "cut_documents": self.stats.cuts,
            "input_bytes": self.nbytes,
        }
        counts_path = unit_counts_path(data_dir, self.unit.index)
        with atomic_open(counts_path, "wb") as fh:
            np.save(fh, self.counts)
        files = [counts_path] + [
            f(data_dir / shard["path"])
            for shards in splits.values()
            for shard in shards
            for f in (bin_path, idx_path)
        ]
        prep_job(data_dir).commit(str(self.unit.index), record, files)
        return record

    def abort(self) -> None:
        for shards in self.shards.values():
            shards.abort()


def _tasks(
    units: list[WorkUnit],
    reader: UnitReader,
    jobs: dict[int, UnitJob],
    new_job: Callable[[WorkUnit], UnitJob],
    task_bytes: int,
) -> Iterator[tuple[int, list[Piece] | None]]:
    """(unit index, pieces) tasks of about ``task_bytes`` in order, then (unit index, None)
    when a unit is exhausted. A unit's job is created when its reading starts, so memory holds
    the state of the few units in flight, not of every unit of the corpus."""
    for unit in units:
        job = jobs[unit.index] = new_job(unit)
        task: list[Piece] = []
        size = 0
        for piece in reader.pieces(unit):
            job.stats.cuts += piece.tail_cut  # a forced cut by the reader (or the planner)
            task.append(piece)
            size += piece.nbytes
            if size >= task_bytes:
                yield unit.index, task
                task, size = [], 0
        if task:
            yield unit.index, task
        yield unit.index, None


def prep_job(data_dir: Path) -> RestartableJob:
    """DATA_DIR as a restartable job: the plan, and a marker per work unit."""
    return RestartableJob(
        folder=data_dir,
        what="data prep",
        plan_name=PLAN_NAME,
        plan_format=PLAN_FORMAT,
        plan_version=PLAN_VERSION,
        marker_of=lambda unit: data_dir / PARTS_DIR / f"unit-{int(unit):05d}.json",
        rerun="rerun the array tasks that own them (or build_shards without --num-shards), "
        "then --finalize",
    )


def unit_counts_path(data_dir: Path, index: int) -> Path:
    """The unit's token counts of its train documents (merged into the manifest)."""
    return data_dir / PARTS_DIR / f"unit-{index:05d}.counts.npy"


def unit_done(data_dir: Path, unit: WorkUnit) -> bool:
    return prep_job(data_dir).done(str(unit.index))


def remove_stale_temporaries(data_dir: Path, unit: WorkUnit) -> None:
    """The temporaries a killed run left for ``unit`` (never renamed into place); only this
    unit's: other array tasks may be writing theirs in the same folder."""
    places = [(data_dir / split, f"{unit.index:05d}-") for split in SPLITS]
    prep_job(data_dir).remove_temporaries(
        [*places, (data_dir / PARTS_DIR, f"unit-{unit.index:05d}.")]
    )


class _Drain:
    """Consumes finished tasks in order: packs results, commits units, stops on garbage input."""

    def __init__(
        self, data_dir: Path, jobs: dict[int, UnitJob], progress: Progress, done: int, total: int
    ):
        self.data_dir, self.jobs, self.progress = data_dir, jobs, progress
        self.finished, self.total = done, total
        self.docs = self.bad = 0

    def __call__(self, unit_index: int, result: Result | None) -> None:
        job = self.jobs[unit_index]
        if result is None:
            record = job.commit(self.data_dir)
            del self.jobs[unit_index]
            self.finished += 1
            self.progress.note = f"units {self.finished}/{self.total}"
            self.progress.update()
            self.docs += sum(record["documents"].values()) + job.stats.bad.total
            self.bad += job.stats.bad.total
            return
        tokens = job.add(result)
        self.progress.update(nbytes=result[4], tokens=tokens, items=len(result[1]))
        docs = self.docs + sum(job.docs.values()) + job.stats.bad.total
        bad = self.bad + job.stats.bad.total
        if docs >= EARLY_ABORT_DOCS and bad * 2 > docs:
            raise UserError(
                f"{job.unit.describe()}: {bad} of the first {docs} documents are unusable "
                f"({job.stats.bad.summary()}); check the input format, --text-field and --txt-docs"
            )


def process_units(
    units: list[WorkUnit],
    settings: JobSettings,
    tok: TextTokenizer,
    data_dir: Path,
    workers: int,
    progress: Progress,
) -> None:
    """Turn each unit into committed shards, ``workers`` processes reading and tokenizing."""
    pending = [u for u in units if not unit_done(data_dir, u)]
    skipped = len(units) - len(pending)
    if skipped:
        print(f"skipping {skipped} finished unit(s) of {len(units)}", file=sys.stderr)
    if not pending:
        return
    for unit in pending:
        remove_stale_temporaries(data_dir, unit)
    jobs: dict[int, UnitJob] = {}
    _set_worker_state(tok, settings)
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    reader = UnitReader(settings.read)
    drain = _Drain(data_dir, jobs, progress, skipped, len(units))
    inflight: deque[tuple[int, Any]] = deque()
    window = max(2, 2 * workers)
    try:
        for unit_index, task in _tasks(
            pending,
            reader,
            jobs,
            lambda u: UnitJob(u, data_dir, settings, tok),
            settings.read.piece_bytes,
        ):
            if task is None:
                inflight.append((unit_index, None))
            elif pool is not None:
                inflight.append((unit_index, pool.apply_async(_process_pieces, (task,))))
            else:
                inflight.append((unit_index, _process_pieces(task)))
            while len(inflight) > window or (inflight and inflight[0][1] is None):
                index, handle = inflight.popleft()
                drain(index, handle.get() if pool is not None and handle is not None else handle)
        while inflight:
            index, handle = inflight.popleft()
            drain(index, handle.get() if pool is not None and handle is not None else handle)
    except BaseException:
        for job in jobs.values():
            job.abort()
        raise
    finally:
        reader.close()
        if pool is not None:
            pool.terminate()
            pool.join()
