"""Megatron-LM indexed datasets (``MMIDIDX``): the one writer and the one reader of our shards.

A shard is a pair ``PREFIX.bin`` (the tokens of every sequence, back to back) and ``PREFIX.idx``:

    b"MMIDIDX\\x00\\x00"  | version <Q = 1 | dtype code <B | sequence count <Q | document count <Q
    sequence lengths int32[sequence count] | sequence byte pointers int64[sequence count]
    document indices int64[document count]   (0, then the sequence index ending each document)

This is byte for byte the layout megatron-core's ``IndexedDataset`` reads. One sequence is one
training sample; each sample is its own "document" for Megatron, so document indices are
``0, 1, ..., n``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.atomic import fsync_dir, tmp_name
from data_prep.errors import UserError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # magic, version <Q, dtype <B, counts <Q <Q

DTYPE_CODES: dict[type[np.number], int] = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def index_size(num_sequences: int, num_documents: int) -> int:
    """Bytes of a well-formed ``.idx``: header, lengths, pointers, document indices."""
    return HEADER_SIZE + num_sequences * (4 + 8) + num_documents * 8


class ShardError(UserError):
    """A shard file that is missing or malformed: ``path`` and what is wrong with it.

    The message adds what to do; :mod:`data_prep.verify` puts its own hint after ``problem``.
    """

    def __init__(self, path: Path, problem: str, hint: str = "rebuild the data with build_shards"):
        super().__init__(f"{path}: {problem}; {hint}")
        self.path = path
        self.problem = problem


def token_dtype_for_vocab(vocab_size: int) -> type[np.number]:
    """uint16 when every id fits (vocab < 65,536), else int32: ids are never truncated."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size < 2**16:
        return np.uint16
    if vocab_size < 2**31:
        return np.int32
    raise UserError(f"a vocabulary of {vocab_size} entries does not fit int32 token ids")


def bin_path(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{prefix}.idx")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records of one written shard."""

    prefix: str
    num_sequences: int
    num_tokens: int
    sha256_bin: str
    sha256_idx: str


class IndexedWriter:
    """Streams sequences into ``PREFIX.bin`` and writes ``PREFIX.idx`` on :meth:`finalize`.

    Both files are written under temporary names and renamed into place only when complete,
    ``.bin`` first and ``.idx`` last, so a present ``.idx`` means a complete shard. Memory holds
    only the per-sequence lengths. Use as a context manager: leaving the block by an exception
    removes the temporary files.
    """

    def __init__(self, prefix: str | os.PathLike[str], dtype: type[np.number]) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}")
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._dtype_type = dtype
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = tmp_name(bin_path(prefix))
        self._idx_tmp = tmp_name(idx_path(prefix))
        self._bin = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in finalize/abort
        self._sha = hashlib.sha256()
        self._lengths: list[int] = []
        self._num_tokens = 0
        self._closed = False

    def add(self, tokens: np.ndarray) -> None:
        """Append one sequence (already the shard's dtype, or safely castable to it)."""
        arr = np.ascontiguousarray(tokens)
        if arr.dtype != self.dtype:
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(self.dtype).max):
                raise ValueError(f"token ids out of range for {self.dtype}")
            arr = arr.astype(self.dtype)
        data = arr.tobytes()
        self._bin.write(data)
        self._sha.update(data)
        self._lengths.append(int(arr.size))
        self._num_tokens += int(arr.size)

    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def finalize(self) -> ShardInfo:
        """Write the index, fsync both files and rename them to their final names."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        documents = np.arange(len(lengths) + 1, dtype=np.int64)
        header = (
            INDEX_HEADER
            + struct.pack("<Q", INDEX_VERSION)
            + struct.pack("<B", DTYPE_CODES[self._dtype_type])
            + struct.pack("<Q", len(lengths))
            + struct.pack("<Q", len(documents))
        )
        idx_sha = hashlib.sha256()
        with open(self._idx_tmp, "wb") as fh:
            for part in (header, lengths.tobytes(), pointers.tobytes(), documents.tobytes()):
                fh.write(part)
                idx_sha.update(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(self._idx_tmp, idx_path(self.prefix))
        fsync_dir(self.prefix.parent)
        self._closed = True
        return ShardInfo(
            prefix=str(self.prefix),
            num_sequences=len(lengths),
            num_tokens=self._num_tokens,
            sha256_bin=self._sha.hexdigest(),
            sha256_idx=idx_sha.hexdigest(),
        )

    def abort(self) -> None:
        """Drop everything written so far; nothing appears under the final names."""
        if self._closed:
            return
        self._bin.close()
        for tmp in (self._bin_tmp, self._idx_tmp):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._closed = True

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finalize()


class IndexedReader:
    """Memory-maps a shard and returns sequences as zero-copy numpy views.

    Every structural fact is checked on open (magic, version, dtype code, that the index and
    the ``.bin`` size agree), and a bad shard raises :class:`ShardError` naming the file.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = Path(prefix)
        ipath, bpath = idx_path(prefix), bin_path(prefix)
        for path in (ipath, bpath):
            if not path.is_file():
                raise ShardError(path, "shard file missing")
        if ipath.stat().st_size < HEADER_SIZE:  # np.memmap cannot map an empty file
            raise ShardError(ipath, "not a Megatron MMIDIDX index (shorter than its header)")
        idx = np.memmap(ipath, dtype=np.uint8, mode="r")
        if bytes(idx[: len(INDEX_HEADER)]) != INDEX_HEADER:
            raise ShardError(ipath, "not a Megatron MMIDIDX index (bad header)")
        off = len(INDEX_HEADER)
        version, code, count, doc_count = struct.unpack_from("<QBQQ", bytes(idx[off:HEADER_SIZE]))
        if version != INDEX_VERSION:
            raise ShardError(ipath, f"index version {version}, expected {INDEX_VERSION}")
        if code not in CODE_DTYPES:
            raise ShardError(ipath, f"unknown dtype code {code}")
        expected = index_size(count, doc_count)
        if idx.size < expected:
            raise ShardError(
                ipath,
                f"index truncated ({idx.size} bytes, expected {expected})",
                "rebuild this shard (rerun build_shards, finished shards are kept)",
            )
        self.dtype = np.dtype(CODE_DTYPES[code])
        pos = HEADER_SIZE
        self.lengths = np.frombuffer(idx, dtype=np.int32, count=count, offset=pos)
        pos += count * 4
        self.pointers = np.frombuffer(idx, dtype=np.int64, count=count, offset=pos)
        pos += count * 8
        self.document_indices = np.frombuffer(idx, dtype=np.int64, count=doc_count, offset=pos)
        self.num_tokens = int(self.lengths.sum(dtype=np.int64))
        bin_size = bpath.stat().st_size
        if bin_size != self.num_tokens * self.dtype.itemsize:
            raise ShardError(
                bpath,
                f"{bin_size} bytes but the index describes {self.num_tokens * self.dtype.itemsize}",
                "the shard is truncated or foreign, rebuild it",
            )
        self._idx = idx
        self._bin = (
            np.memmap(bpath, dtype=self.dtype, mode="r")
            if bin_size
            else np.zeros(0, dtype=self.dtype)
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start : start + int(self.lengths[i])]

    def tokens(self) -> np.ndarray:
        """All tokens of the shard, as one memory-mapped array."""
        return self._bin
