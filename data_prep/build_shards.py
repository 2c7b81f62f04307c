"""Tokenize a corpus with the teacher's tokenizer and write packed Megatron-LM shards.

    python -m data_prep.build_shards --input SRC [SRC ...] --tokenizer TOK --seq-len N \\
        --output DATA_DIR [--workers W] [--valid-fraction F] [--seed S] [--text-field text]

How it works. The corpus is cut into work units (see ``sources``). For each unit the main process
reads documents into batches of about 1 MB; ``--workers`` processes tokenize them (and pick each
document's split by a keyed hash of its text, so duplicates never straddle train and valid); the
main process packs the ids in order and streams them into ``DATA_DIR/{train,valid}/UNIT-K.bin/.idx``.
A unit is finished when ``DATA_DIR/parts/unit-UNIT.json`` exists: a rerun skips finished units, and
shards are only ever complete under their final names. ``--num-shards K --shard-index i`` (or
``SLURM_ARRAY_TASK_ID``) does units ``i, i+K, ...`` only; ``--finalize`` then checks every unit
and writes ``manifest.json``. Output bytes depend on the inputs and settings, never on the number
of workers or array tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import write_json
from data_prep.errors import UserError, cli_main
from data_prep.indexed import IndexedWriter, ShardInfo, bin_path, idx_path, token_dtype_for_vocab
from data_prep.manifest import FORMAT, FORMAT_VERSION, SPLITS, manifest_path
from data_prep.packing import PACK_MODES, Packer
from data_prep.progress import Progress
from data_prep.sources import BadInput, WorkUnit, iter_documents, plan_units, unit_input_bytes
from data_prep.tokenizer import TextTokenizer

PLAN_NAME = "prep_plan.json"
PARTS_DIR = "parts"
EARLY_ABORT_DOCS = 1000


@dataclass(frozen=True)
class PrepSettings:
    """Every setting that shapes the output bytes (and so must agree across array tasks)."""

    inputs: tuple[str, ...]
    seq_len: int
    pack: str
    valid_fraction: float
    seed: int
    text_field: str
    unit_bytes: int
    unit_rows: int
    max_shard_tokens: int
    hf_split: str
    hf_streaming: bool

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs"] = list(self.inputs)
        return out


# --- the worker side --------------------------------------------------------------------------
_TOKENIZER: TextTokenizer | None = None
_SPLIT_KEY = b""
_VALID_THRESHOLD = 0


def _set_worker_state(tok: TextTokenizer, seed: int, valid_fraction: float) -> None:
    global _TOKENIZER, _SPLIT_KEY, _VALID_THRESHOLD
    _TOKENIZER = tok
    _SPLIT_KEY = str(seed).encode()
    _VALID_THRESHOLD = int(valid_fraction * 2**64)


def is_valid_document(text: str, key: bytes, threshold: int) -> bool:
    """The split of a document: a keyed hash of its text, below ``fraction * 2**64`` is valid."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") < threshold


def _tokenize_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """ids of all documents, their lengths, valid flags, train token counts, UTF-8 bytes."""
    assert _TOKENIZER is not None
    tok = _TOKENIZER
    dtype = token_dtype_for_vocab(tok.vocab_size)
    flat, lengths = tok.encode_concat(texts, dtype)
    valid = np.fromiter(
        (is_valid_document(t, _SPLIT_KEY, _VALID_THRESHOLD) for t in texts),
        dtype=bool,
        count=len(texts),
    )
    if valid.any():
        keep = np.repeat(~valid, lengths)
        counts = np.bincount(flat[keep], minlength=tok.vocab_size)
    else:
        counts = np.bincount(flat, minlength=tok.vocab_size)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return flat, lengths, valid, counts.astype(np.int64), nbytes


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


class _UnitJob:
    """Packing and writing state of the unit being processed."""

    def __init__(self, unit: WorkUnit, data_dir: Path, settings: PrepSettings, tok: TextTokenizer):
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
        self.bad = BadInput()
        self.nbytes = 0

    def add(self, result: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]) -> int:
        flat, lengths, valid, counts, nbytes = result
        self.counts += counts
        self.nbytes += nbytes
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
        record = {
            "unit": self.unit.to_json(),
            "splits": {s: self.shards[s].finish() for s in SPLITS},
            "documents": self.docs,
            "bad": self.bad.to_json(),
            "input_bytes": self.nbytes,
        }
        parts = data_dir / PARTS_DIR
        counts_path = parts / f"unit-{self.unit.index:05d}.counts.npy"
        counts_tmp = parts / f".unit-{self.unit.index:05d}.counts.{os.getpid()}.npy"
        parts.mkdir(parents=True, exist_ok=True)
        np.save(counts_tmp, self.counts)
        os.replace(counts_tmp, counts_path)
        write_json(parts / f"unit-{self.unit.index:05d}.json", record)  # the commit marker, last
        return record

    def abort(self) -> None:
        for shards in self.shards.values():
            shards.abort()


def _document_batches(
    units: list[WorkUnit],
    settings: PrepSettings,
    jobs: dict[int, _UnitJob],
    new_job: Callable[[WorkUnit], _UnitJob],
    batch_bytes: int,
) -> Iterator[tuple[int, list[str] | None]]:
    """(unit index, texts) batches in order, then (unit index, None) when a unit is exhausted.

    A unit's job (its packers, writers and token counts) is created when its reading starts, so
    memory holds the state of the few units in flight, not of every unit of the corpus.
    """
    for unit in units:
        job = jobs[unit.index] = new_job(unit)
        bad = job.bad
        batch: list[str] = []
        size = 0
        for text in iter_documents(unit, settings.text_field, bad, settings.hf_split):
            batch.append(text)
            size += len(text)
            if size >= batch_bytes:
                yield unit.index, batch
                batch, size = [], 0
        if batch:
            yield unit.index, batch
        yield unit.index, None


def unit_done(data_dir: Path, unit: WorkUnit) -> bool:
    return (data_dir / PARTS_DIR / f"unit-{unit.index:05d}.json").is_file()


def remove_stale_temporaries(data_dir: Path, unit: WorkUnit) -> None:
    """Delete the temporary files a killed run left for ``unit`` (never renamed into place).

    Only this unit's files: other array tasks may be writing theirs in the same folder.
    """
    for split in SPLITS:
        for path in (data_dir / split).glob(f".{unit.index:05d}-*.tmp-*"):
            path.unlink(missing_ok=True)
    for path in (data_dir / PARTS_DIR).glob(f".unit-{unit.index:05d}.*"):
        path.unlink(missing_ok=True)


def process_units(
    units: list[WorkUnit],
    settings: PrepSettings,
    tok: TextTokenizer,
    data_dir: Path,
    workers: int,
    progress: Progress,
    batch_bytes: int = 1 << 20,
) -> None:
    """Turn each unit into committed shards, ``workers`` processes tokenizing in parallel."""
    pending = [u for u in units if not unit_done(data_dir, u)]
    skipped = len(units) - len(pending)
    if skipped:
        print(f"skipping {skipped} finished unit(s) of {len(units)}", file=sys.stderr)
    if not pending:
        return
    for unit in pending:
        remove_stale_temporaries(data_dir, unit)
    jobs: dict[int, _UnitJob] = {}
    finished = [skipped]
    _set_worker_state(tok, settings.seed, settings.valid_fraction)
    seen = {"docs": 0, "bad": 0}
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    inflight: deque[tuple[int, Any]] = deque()
    window = max(2, 2 * workers)

    def drain_one() -> None:
        unit_index, handle = inflight.popleft()
        job = jobs[unit_index]
        if handle is None:
            record = job.commit(data_dir)
            del jobs[unit_index]
            finished[0] += 1
            progress.note = f"units {finished[0]}/{len(units)}"
            progress.update()
            seen["docs"] += sum(record["documents"].values()) + job.bad.total
            seen["bad"] += job.bad.total
            return
        result = handle.get() if pool is not None else handle
        tokens = job.add(result)
        progress.update(nbytes=result[4], tokens=tokens, items=len(result[1]))
        docs = seen["docs"] + sum(job.docs.values()) + job.bad.total
        bad = seen["bad"] + job.bad.total
        if docs >= EARLY_ABORT_DOCS and bad * 2 > docs:
            raise UserError(
                f"{job.unit.describe()}: {bad} of the first {docs} documents are unusable "
                f"({job.bad.summary()}); check the input format and --text-field"
            )

    try:
        for unit_index, texts in _document_batches(
            pending, settings, jobs, lambda u: _UnitJob(u, data_dir, settings, tok), batch_bytes
        ):
            if texts is None:
                inflight.append((unit_index, None))
            elif pool is not None:
                inflight.append((unit_index, pool.apply_async(_tokenize_batch, (texts,))))
            else:
                inflight.append((unit_index, _tokenize_batch(texts)))
            while len(inflight) > window or (inflight and inflight[0][1] is None):
                drain_one()
        while inflight:
            drain_one()
    except BaseException:
        for job in jobs.values():
            job.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


# --- plan, finalize ---------------------------------------------------------------------------
def _check_or_write_plan(
    data_dir: Path, settings: PrepSettings, tok: TextTokenizer, units: list[WorkUnit]
) -> None:
    plan: dict[str, Any] = {
        "settings": settings.to_json(),
        "tokenizer": tok.info.to_json(),
        "units": [u.to_json() for u in units],
    }
    path = data_dir / PLAN_NAME
    if path.is_file():
        import json

        old = json.loads(path.read_text())
        diffs = [
            k for k in plan["settings"] if old.get("settings", {}).get(k) != plan["settings"][k]
        ]
        if old.get("tokenizer", {}).get("fingerprint") != tok.info.fingerprint:
            diffs.append("tokenizer")
        if not diffs and old.get("units") != plan["units"]:
            diffs.append("input files (their sizes changed)")
        if diffs:
            raise UserError(
                f"{path}: {data_dir} was prepared with different {', '.join(diffs)}; "
                "use another --output folder, or delete this one to start over"
            )
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def finalize(data_dir: Path, max_bad_fraction: float) -> dict[str, Any]:
    """Check every unit, merge the unit records into manifest.json (atomically)."""
    import json

    plan_path = data_dir / PLAN_NAME
    if not plan_path.is_file():
        raise UserError(f"{plan_path}: missing; run build_shards on this folder first")
    plan = json.loads(plan_path.read_text())
    units = plan["units"]
    missing = [
        u["index"]
        for u in units
        if not (data_dir / PARTS_DIR / f"unit-{u['index']:05d}.json").is_file()
    ]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise UserError(
            f"{data_dir}: {len(missing)} of {len(units)} units are not finished ({shown}); rerun the "
            "array tasks that own them (or build_shards without --num-shards), then --finalize"
        )
    tok = plan["tokenizer"]
    splits: dict[str, dict[str, Any]] = {
        s: {"num_sequences": 0, "num_tokens": 0, "shards": []} for s in SPLITS
    }
    bad = BadInput()
    documents = dict.fromkeys(SPLITS, 0)
    input_bytes = 0
    counts = np.zeros(tok["vocab_size"], dtype=np.int64)
    for u in units:
        stem = data_dir / PARTS_DIR / f"unit-{u['index']:05d}"
        record = json.loads(stem.with_suffix(".json").read_text())
        for split in SPLITS:
            for shard in record["splits"][split]:
                splits[split]["shards"].append(shard)
                splits[split]["num_sequences"] += shard["num_sequences"]
                splits[split]["num_tokens"] += shard["num_tokens"]
            documents[split] += record["documents"][split]
        bad.merge(BadInput.from_json(record["bad"]))
        input_bytes += record["input_bytes"]
        counts += np.load(stem.with_suffix(".counts.npy"))
    total_docs = sum(documents.values()) + bad.total
    if bad.total and bad.total > max_bad_fraction * total_docs:
        report = data_dir / "bad_input.json"
        write_json(report, {"documents": total_docs, **bad.to_json()})
        for split in SPLITS:
            for shard in splits[split]["shards"]:
                for path in (
                    idx_path(data_dir / shard["path"]),
                    bin_path(data_dir / shard["path"]),
                ):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        for marker in (data_dir / PARTS_DIR).glob("unit-*"):
            marker.unlink()
        raise UserError(
            f"{bad.total} of {total_docs} documents ({100 * bad.total / total_docs:.2f}%) are unusable, "
            f"above --max-bad-fraction {max_bad_fraction}: {bad.summary()}. No shards were kept; "
            f"details in {report}. Fix the input or raise --max-bad-fraction"
        )
    if splits["train"]["num_sequences"] == 0:
        raise UserError(f"{data_dir}: the corpus produced no training sequences; check --input")
    settings = plan["settings"]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seq_len": settings["seq_len"],
        "vocab_size": tok["vocab_size"],
        "dtype": np.dtype(token_dtype_for_vocab(tok["vocab_size"])).name,
        "special_ids": tok["special_ids"],
        "tokenizer": tok,
        "settings": settings,
        "splits": splits,
        "stats": {"documents": documents, "bad": bad.to_json(), "input_bytes": input_bytes},
        "token_counts": counts.tolist(),
    }
    write_json(manifest_path(data_dir), manifest)
    return manifest


# --- command line -----------------------------------------------------------------------------
def _default_workers() -> int:
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return max(1, len(os.sched_getaffinity(0)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build_shards", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--input",
        nargs="+",
        default=[],
        metavar="SRC",
        help="files, globs, save_to_disk folders or hf:NAME[:CONFIG]",
    )
    p.add_argument("--tokenizer", help="Hugging Face tokenizer folder or SentencePiece .model")
    p.add_argument("--seq-len", type=int, help="tokens per sequence, [CLS] and [SEP] included")
    p.add_argument("--output", required=True, help="DATA_DIR")
    p.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="tokenizer processes (default: CPUs)",
    )
    p.add_argument(
        "--valid-fraction", type=float, default=0.01, help="fraction of documents held out"
    )
    p.add_argument("--seed", type=int, default=1234, help="key of the train/valid split hash")
    p.add_argument(
        "--text-field", default="text", help="the text field of jsonl / parquet / datasets rows"
    )
    p.add_argument(
        "--pack",
        choices=PACK_MODES,
        default="full",
        help="full: across documents (RoBERTa FULL-SENTENCES); doc: within one document",
    )
    p.add_argument(
        "--unit-size-mb",
        type=int,
        default=1024,
        help="large uncompressed files are cut into units of about this size",
    )
    p.add_argument(
        "--unit-rows",
        type=int,
        default=1_000_000,
        help="datasets are cut into units of this many rows",
    )
    p.add_argument(
        "--max-shard-tokens",
        type=int,
        default=1 << 28,
        help="tokens per shard before a new one starts",
    )
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.001,
        help="fail above this fraction of unusable documents",
    )
    p.add_argument("--hf-split", default="train", help="split of hf: and save_to_disk inputs")
    p.add_argument(
        "--hf-streaming",
        action="store_true",
        help="stream hf: datasets instead of downloading them first",
    )
    p.add_argument(
        "--num-shards",
        type=int,
        help="split the units across this many array tasks (default: SLURM_ARRAY_TASK_COUNT)",
    )
    p.add_argument(
        "--shard-index", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID)"
    )
    p.add_argument(
        "--finalize", action="store_true", help="only merge finished units into manifest.json"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _task_slice(args: argparse.Namespace) -> tuple[int, int] | None:
    num = args.num_shards
    index = args.shard_index
    in_array = os.environ.get("SLURM_ARRAY_TASK_ID", "").isdigit()
    if num is None and in_array and os.environ.get("SLURM_ARRAY_TASK_COUNT", "").isdigit():
        num = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    if index is None and in_array and num is not None:
        index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(
            os.environ.get("SLURM_ARRAY_TASK_MIN", "0")
        )
    if num is None and index is None:
        return None
    if num is None or index is None:
        raise UserError(
            "--num-shards and --shard-index go together (or run inside a Slurm array job)"
        )
    if not 0 <= index < num:
        raise UserError(f"--shard-index {index} is outside 0..{num - 1}")
    return num, index


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    data_dir = Path(args.output)
    if args.finalize:
        manifest = finalize(data_dir, args.max_bad_fraction)
        _print_summary(data_dir, manifest)
        return
    if not args.input or not args.tokenizer or args.seq_len is None:
        raise UserError("--input, --tokenizer and --seq-len are required (or --finalize)")
    if args.seq_len < 8:
        raise UserError(
            f"--seq-len {args.seq_len} is too small: a sequence holds [CLS], tokens and [SEP]; use 128 or 512"
        )
    if not 0 <= args.valid_fraction < 1:
        raise UserError(f"--valid-fraction {args.valid_fraction} must be in [0, 1)")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from --workers
    tok = TextTokenizer(args.tokenizer)
    settings = PrepSettings(
        inputs=tuple(args.input),
        seq_len=args.seq_len,
        pack=args.pack,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        text_field=args.text_field,
        unit_bytes=args.unit_size_mb << 20,
        unit_rows=args.unit_rows,
        max_shard_tokens=args.max_shard_tokens,
        hf_split=args.hf_split,
        hf_streaming=args.hf_streaming,
    )
    units = plan_units(
        list(args.input), settings.unit_bytes, settings.unit_rows, args.hf_split, args.hf_streaming
    )
    _check_or_write_plan(data_dir, settings, tok, units)
    task = _task_slice(args)
    mine = units if task is None else units[task[1] :: task[0]]
    total = sum(unit_input_bytes(u) for u in mine if not unit_done(data_dir, u))
    progress = Progress("build_shards", total_bytes=total, enabled=not args.quiet)
    process_units(mine, settings, tok, data_dir, args.workers, progress)
    progress.close()
    if task is None:
        manifest = finalize(data_dir, args.max_bad_fraction)
        _print_summary(data_dir, manifest)
    else:
        print(
            f"task {task[1]} of {task[0]}: {len(mine)} unit(s) done; run --finalize when all tasks end",
            file=sys.stderr,
        )


def _print_summary(data_dir: Path, manifest: dict[str, Any]) -> None:
    for split in SPLITS:
        s = manifest["splits"][split]
        print(
            f"{split}: {s['num_sequences']:,} sequences, {s['num_tokens']:,} tokens in {len(s['shards'])} shard(s)"
        )
    bad = BadInput.from_json(manifest["stats"]["bad"])
    if bad.total:
        print(f"skipped {bad.total} unusable document(s): {bad.summary()}")
    print(f"wrote {manifest_path(data_dir)}")


if __name__ == "__main__":
    main()
