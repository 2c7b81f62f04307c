"""Check a prepared DATA_DIR against its manifest, shard by shard.

    python -m data_prep.verify DATA_DIR [--quick]

For every shard the manifest lists: both files present; the ``.idx`` header, version and dtype
(through :class:`~data_prep.indexed.IndexedReader`), its pointers and document indices; the
``.bin`` size against the index; the sha256 of both files against the manifest (skipped with
``--quick``); the sequence and token counts against the manifest; every token id below
``vocab_size``; every sequence ``[CLS] ... [SEP]``, at least 3 and at most ``seq_len`` tokens long.
Then the manifest itself: each split's totals equal the sum of its shards, ``token_counts`` has
``vocab_size`` entries and agrees with the tokens of the train shards.

One line per problem (naming the file and what to do), then a summary. Shard files the manifest
does not list and temporary files of an unfinished run are reported as warnings. Exit status 0
when clean (warnings allowed), 1 when there are problems, 2 when DATA_DIR is missing or its
manifest unreadable. Shards are memory-mapped and scanned in chunks, so memory stays bounded
whatever their size.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.errors import cli_main
from data_prep.flags import HelpFormatter
from data_prep.indexed import (
    IndexedReader,
    ShardError,
    bin_path,
    idx_path,
    index_size,
    sha256_file,
    token_dtype_for_vocab,
)
from data_prep.manifest import SPLITS, DataManifest, ShardEntry, load_manifest, manifest_path

CHUNK_TOKENS = 1 << 22  # tokens scanned at a time (bincount widens them to int64: 32 MiB)


def rebuild_hint(data_dir: Path, rel: str) -> str:
    """What to do about a bad shard: redo its unit (shards are named UNIT-K)."""
    unit = Path(rel).name.split("-")[0]
    if unit.isdigit():
        marker = data_dir / "parts" / f"unit-{unit}.json"
        return f"to rebuild it, delete {marker} and rerun build_shards with the same arguments"
    return "rebuild the data with build_shards"


@dataclass
class Report:
    """Problems found, and what was checked."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    sequences: int = 0
    tokens: int = 0

    def problem(self, message: str) -> None:
        self.problems.append(message)
        print(message, flush=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"warning: {message}", flush=True)


@dataclass
class ManifestFacts:
    """What the shard checks need from the manifest."""

    seq_len: int
    vocab_size: int
    dtype: np.dtype[Any]
    cls: int
    sep: int


def _manifest_facts(manifest: DataManifest, path: Path, report: Report) -> ManifestFacts | None:
    """The facts of the manifest the shards are checked against, or None (with problems
    reported) when they make no sense."""
    fix = "rebuild the data with build_shards (or rerun --finalize)"
    vocab_size, seq_len = manifest.vocab_size, manifest.seq_len
    if vocab_size <= 0 or seq_len < 3:
        report.problem(f"{path}: vocab_size {vocab_size} / seq_len {seq_len} make no sense; {fix}")
        return None
    ok = True
    expected = np.dtype(token_dtype_for_vocab(vocab_size))
    if manifest.dtype != expected.name:
        report.problem(
            f"{path}: dtype {manifest.dtype!r}, but a vocabulary of {vocab_size} needs "
            f"{expected.name!r}; {fix}"
        )
        ok = False
    cls, sep = manifest.special_ids.cls, manifest.special_ids.sep
    for name, value in (("cls", cls), ("sep", sep)):
        if not 0 <= value < vocab_size:
            report.problem(f"{path}: special id {name}={value} is outside the vocabulary; {fix}")
            ok = False
    return ManifestFacts(seq_len, vocab_size, expected, cls, sep) if ok else None


def _check_totals(manifest: DataManifest, path: Path, report: Report) -> None:
    """Each split's totals equal the sum of its shards."""
    for name, split in manifest.splits.items():
        for key in ("num_sequences", "num_tokens"):
            total = sum(getattr(s, key) for s in split.shards)
            if getattr(split, key) != total:
                report.problem(
                    f"{path}: splits.{name}.{key} is {getattr(split, key)}, but its shards add up "
                    f"to {total}; rerun build_shards --finalize on this folder"
                )


def _scan_tokens(
    reader: IndexedReader, facts: ManifestFacts, counts: np.ndarray | None
) -> tuple[int, int]:
    """(smallest, largest) token id of a shard, adding its bincount to ``counts`` if given."""
    tokens = reader.tokens()
    lo, hi = int(tokens[0]), int(tokens[0])
    for start in range(0, tokens.size, CHUNK_TOKENS):
        chunk = np.asarray(tokens[start : start + CHUNK_TOKENS])
        c_lo, c_hi = int(chunk.min()), int(chunk.max())
        lo, hi = min(lo, c_lo), max(hi, c_hi)
        if counts is not None and c_lo >= 0 and c_hi < facts.vocab_size:
            counts += np.bincount(chunk, minlength=facts.vocab_size)
    return lo, hi


@dataclass
class _Shard:
    """One shard under check: its files, its reader, and the advice for any problem."""

    entry: ShardEntry
    ipath: Path
    bpath: Path
    reader: IndexedReader
    fix: str


def _open_shard(data_dir: Path, entry: ShardEntry, report: Report) -> _Shard | None:
    """Both files present and the index readable; None (problems reported) otherwise."""
    prefix = entry.prefix(data_dir)
    fix = rebuild_hint(data_dir, entry.path)
    ipath, bpath = idx_path(prefix), bin_path(prefix)
    missing = [p for p in (ipath, bpath) if not p.is_file()]
    for path in missing:
        report.problem(f"{path}: missing; {fix}")
    if missing:
        return None
    try:
        reader = IndexedReader(prefix)
    except ShardError as exc:
        report.problem(f"{exc.path}: {exc.problem}; {fix}")
        return None
    return _Shard(entry, ipath, bpath, reader, fix)


def _check_index(s: _Shard, facts: ManifestFacts, quick: bool, report: Report) -> bool:
    """The index against the manifest: dtype, size, counts, checksums and sequence pointers.
    False when the pointers are wrong (reading sequences would read the wrong places)."""
    reader, n = s.reader, len(s.reader)
    if reader.dtype != facts.dtype:
        report.problem(
            f"{s.ipath}: dtype {reader.dtype.name}, the manifest says {facts.dtype.name}; {s.fix}"
        )
    extra = s.ipath.stat().st_size - index_size(n, len(reader.document_indices))
    if extra:
        report.problem(f"{s.ipath}: {extra} bytes after the index; {s.fix}")
    if n != s.entry.num_sequences:
        report.problem(
            f"{s.ipath}: {n} sequences, the manifest says {s.entry.num_sequences}; {s.fix}"
        )
    if reader.num_tokens != s.entry.num_tokens:
        report.problem(
            f"{s.bpath}: {reader.num_tokens} tokens, the manifest says {s.entry.num_tokens}; "
            f"{s.fix}"
        )
    if not quick:
        for path, recorded in ((s.bpath, s.entry.sha256_bin), (s.ipath, s.entry.sha256_idx)):
            digest = sha256_file(path)
            if digest != recorded:
                report.problem(
                    f"{path}: sha256 {digest[:16]}... differs from the manifest's "
                    f"{recorded[:16]}... (the file changed or is corrupt); {s.fix}"
                )
    lengths = reader.lengths.astype(np.int64)
    expected_ptr = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1] * reader.dtype.itemsize, out=expected_ptr[1:])
    if not np.array_equal(reader.pointers, expected_ptr):
        bad = int(np.flatnonzero(reader.pointers != expected_ptr)[0])
        report.problem(f"{s.ipath}: sequence pointers are inconsistent (first at {bad}); {s.fix}")
        return False
    if not np.array_equal(reader.document_indices, np.arange(n + 1, dtype=np.int64)):
        report.problem(f"{s.ipath}: document indices are not 0..{n}; {s.fix}")
    return True


def _check_sequences(
    s: _Shard, facts: ManifestFacts, report: Report, counts: np.ndarray | None
) -> None:
    """Every sequence: 3 to seq_len tokens, [CLS] first, [SEP] last, ids in the vocabulary."""
    reader, lengths = s.reader, s.reader.lengths.astype(np.int64)
    short = np.flatnonzero(lengths < 3)
    if short.size:
        report.problem(
            f"{s.bpath}: {short.size} sequence(s) shorter than 3 tokens (first: #{short[0]}); "
            f"{s.fix}"
        )
    long = np.flatnonzero(lengths > facts.seq_len)
    if long.size:
        report.problem(
            f"{s.bpath}: {long.size} sequence(s) longer than seq_len {facts.seq_len} "
            f"(first: #{long[0]}, {lengths[long[0]]} tokens); {s.fix}"
        )
    if not reader.num_tokens:
        return
    tokens = reader.tokens()
    starts = reader.pointers // reader.dtype.itemsize
    nonempty = lengths > 0
    firsts = np.asarray(tokens[starts[nonempty]])
    lasts = np.asarray(tokens[(starts + lengths - 1)[nonempty]])
    for what, values, want in (("start", firsts, facts.cls), ("end", lasts, facts.sep)):
        wrong = np.flatnonzero(values != want)
        if wrong.size:
            name = "[CLS]" if want == facts.cls else "[SEP]"
            report.problem(
                f"{s.bpath}: {wrong.size} sequence(s) do not {what} with {name} (id {want}); "
                f"first: #{np.flatnonzero(nonempty)[wrong[0]]}; {s.fix}"
            )
    lo, hi = _scan_tokens(reader, facts, counts)
    if lo < 0 or hi >= facts.vocab_size:
        report.problem(
            f"{s.bpath}: token ids span {lo}..{hi}, outside the vocabulary "
            f"0..{facts.vocab_size - 1}; {s.fix}"
        )


def check_shard(
    data_dir: Path,
    entry: ShardEntry,
    facts: ManifestFacts,
    quick: bool,
    report: Report,
    counts: np.ndarray | None = None,
) -> bool:
    """Check one shard of the manifest; True when it is clean. ``counts``: add its tokens (less
    the [CLS]/[SEP] framing, which is not corpus text) when it is clean."""
    before = len(report.problems)
    report.shards += 1
    shard = _open_shard(data_dir, entry, report)
    if shard is None:
        return False
    if not _check_index(shard, facts, quick, report):
        return False
    _check_sequences(shard, facts, report, counts)
    n = len(shard.reader)
    report.sequences += n
    report.tokens += shard.reader.num_tokens
    clean = len(report.problems) == before
    if clean and counts is not None:
        counts[facts.cls] -= n
        counts[facts.sep] -= n
    return clean


def _check_token_counts(
    manifest: DataManifest,
    path: Path,
    facts: ManifestFacts,
    counts: np.ndarray | None,
    report: Report,
) -> None:
    """token_counts has vocab_size entries and counts the corpus tokens of the train shards."""
    token_counts = manifest.token_counts
    if len(token_counts) != facts.vocab_size:
        report.problem(
            f"{path}: token_counts has {len(token_counts)} entries, expected vocab_size "
            f"{facts.vocab_size}; rerun build_shards --finalize"
        )
        return
    if counts is None:
        return
    # ``counts``: the train shards' tokens less the [CLS]/[SEP] framing; in --pack full they also
    # hold a [SEP] between documents, so that id may exceed the record. Every other must agree.
    recorded = np.asarray(token_counts, dtype=np.int64)
    differ = counts != recorded
    if manifest.settings.get("pack", "full") == "full":
        differ[facts.sep] = counts[facts.sep] < recorded[facts.sep]
    if differ.any():
        first = int(np.flatnonzero(differ)[0])
        report.problem(
            f"{path}: token_counts disagrees with the train shards for {int(differ.sum())} id(s) "
            f"(first: id {first}, recorded {recorded[first]}, found {counts[first]}); "
            "rerun build_shards --finalize, or rebuild the data"
        )


def _check_strays(data_dir: Path, listed: set[Path], report: Report) -> None:
    """Shard files the manifest does not list, and temporary files: warnings only."""
    for split in SPLITS:
        folder = data_dir / split
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if ".tmp" in path.name:
                report.warn(f"{path}: temporary file of an unfinished run; delete it")
            elif path.suffix in (".bin", ".idx") and path.with_suffix("") not in listed:
                report.warn(f"{path}: not listed in the manifest; delete it (or rebuild the data)")


def verify(data_dir: Path, quick: bool = False) -> Report:
    """Check DATA_DIR; problems are printed as they are found and collected in the report."""
    manifest = load_manifest(data_dir)
    path = manifest_path(data_dir)
    report = Report()
    facts = _manifest_facts(manifest, path, report)
    if facts is None:
        return report
    _check_totals(manifest, path, report)
    counts: np.ndarray | None = np.zeros(facts.vocab_size, dtype=np.int64)
    listed: set[Path] = set()
    for split in SPLITS:
        for entry in manifest.splits[split].shards:
            listed.add(entry.prefix(data_dir))
            clean = check_shard(
                data_dir, entry, facts, quick, report, counts if split == "train" else None
            )
            if split == "train" and not clean:
                counts = None  # a broken shard: the train-token comparison would be meaningless
    _check_token_counts(manifest, path, facts, counts, report)
    _check_strays(data_dir, listed, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.verify",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="the --output folder of build_shards")
    p.add_argument("--quick", action="store_true", help="skip the sha256 of every file")
    return p


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    report = verify(data_dir, quick=args.quick)
    checked = (
        f"{report.shards} shard(s), {report.sequences:,} sequences, {report.tokens:,} tokens"
        + (" (sha256 skipped: --quick)" if args.quick else "")
    )
    if report.problems:
        print(f"verify: {len(report.problems)} problem(s) in {data_dir}; checked {checked}")
        raise SystemExit(1)
    warned = f", {len(report.warnings)} warning(s)" if report.warnings else ""
    print(f"verify: {data_dir} is OK{warned}: {checked}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
