"""Tests of data_prep.indexed: the MMIDIDX bytes, megatron-core compatibility, refusals, abort."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from data_prep.errors import UserError
from data_prep.indexed import (
    INDEX_HEADER,
    IndexedReader,
    IndexedWriter,
    bin_path,
    idx_path,
    token_dtype_for_vocab,
)

SEQS = [[2, 10, 11, 3], [2, 65535, 3], [2, 7, 8, 9, 3]]


def write(prefix: Path, seqs: list[list[int]], dtype: type[np.number] = np.uint16) -> None:
    with IndexedWriter(prefix, dtype) as writer:
        for s in seqs:
            writer.add(np.asarray(s, dtype=dtype))


def test_index_and_bin_bytes(tmp_path: Path) -> None:
    prefix = tmp_path / "s"
    with IndexedWriter(prefix, np.uint16) as writer:
        for s in SEQS:
            writer.add(np.asarray(s, dtype=np.uint16))
    assert len(writer) == 3 and writer.num_tokens == 12  # finalized on leaving the block
    idx = idx_path(prefix).read_bytes()
    lengths = [len(s) for s in SEQS]
    expected = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)  # version
        + struct.pack("<B", 8)  # uint16
        + struct.pack("<Q", 3)  # sequences
        + struct.pack("<Q", 4)  # document indices
        + struct.pack("<3i", *lengths)
        + struct.pack("<3q", 0, 2 * lengths[0], 2 * (lengths[0] + lengths[1]))
        + struct.pack("<4q", 0, 1, 2, 3)
    )
    assert idx == expected
    assert bin_path(prefix).read_bytes() == struct.pack(
        f"<{sum(lengths)}H", *[t for s in SEQS for t in s]
    )
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_shard_info_hashes_the_files(tmp_path: Path) -> None:
    prefix = tmp_path / "s"
    writer = IndexedWriter(prefix, np.int32)
    for s in SEQS:
        writer.add(np.asarray(s, dtype=np.int64))  # cast to the shard dtype
    info = writer.finalize()
    assert (info.num_sequences, info.num_tokens) == (3, 12)
    assert info.sha256_bin == hashlib.sha256(bin_path(prefix).read_bytes()).hexdigest()
    assert info.sha256_idx == hashlib.sha256(idx_path(prefix).read_bytes()).hexdigest()
    assert idx_path(prefix).read_bytes()[len(INDEX_HEADER) + 8] == 4  # int32's code


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_read_back_with_ours_and_megatron(tmp_path: Path, dtype: type[np.number]) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    seqs = [*SEQS, [2, 3]] + ([[2, 70000, 2**31 - 1, 3]] if dtype == np.int32 else [])
    write(tmp_path / "s", seqs, dtype)
    reader = IndexedReader(tmp_path / "s")
    assert reader.dtype == np.dtype(dtype)
    assert [reader[i].tolist() for i in range(len(reader))] == seqs
    assert reader.num_tokens == sum(map(len, seqs))
    ds = IndexedDataset(str(tmp_path / "s"), multimodal=False, mmap=True)
    assert len(ds) == len(seqs)
    assert [ds[i].tolist() for i in range(len(ds))] == seqs
    assert ds[0].dtype == np.dtype(dtype)


def test_empty_shard(tmp_path: Path) -> None:
    info = IndexedWriter(tmp_path / "e", np.uint16).finalize()
    assert (info.num_sequences, info.num_tokens) == (0, 0)
    assert bin_path(tmp_path / "e").stat().st_size == 0
    assert idx_path(tmp_path / "e").read_bytes() == (
        INDEX_HEADER + struct.pack("<QBQQ", 1, 8, 0, 1) + struct.pack("<q", 0)
    )
    reader = IndexedReader(tmp_path / "e")
    assert len(reader) == 0 and reader.tokens().size == 0


def test_truncated_bin_is_refused_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path / "s", SEQS)
    data = bin_path(tmp_path / "s").read_bytes()
    bin_path(tmp_path / "s").write_bytes(data[:-2])
    with pytest.raises(UserError, match=r"s\.bin: .* truncated"):
        IndexedReader(tmp_path / "s")


@pytest.mark.parametrize("keep", [0, 5, 30, -8])
def test_truncated_idx_is_refused_naming_the_file(tmp_path: Path, keep: int) -> None:
    write(tmp_path / "s", SEQS)
    data = idx_path(tmp_path / "s").read_bytes()
    idx_path(tmp_path / "s").write_bytes(data[:keep])
    with pytest.raises(UserError, match=r"s\.idx: "):
        IndexedReader(tmp_path / "s")


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [(0, b"X", "bad header"), (9, b"\x02", "version 2"), (17, b"\x63", "unknown dtype code 99")],
)
def test_foreign_idx_is_refused(tmp_path: Path, offset: int, value: bytes, message: str) -> None:
    write(tmp_path / "s", SEQS)
    data = bytearray(idx_path(tmp_path / "s").read_bytes())
    data[offset : offset + 1] = value
    idx_path(tmp_path / "s").write_bytes(bytes(data))
    with pytest.raises(UserError, match=message):
        IndexedReader(tmp_path / "s")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "s", SEQS)
    bin_path(tmp_path / "s").unlink()
    with pytest.raises(UserError, match=r"s\.bin: shard file missing"):
        IndexedReader(tmp_path / "s")


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    writer = IndexedWriter(tmp_path / "a", np.uint16)
    writer.add(np.asarray(SEQS[0], dtype=np.uint16))
    assert list(tmp_path.iterdir())  # the temporary .bin exists while writing
    writer.abort()
    writer.abort()  # twice is harmless
    assert list(tmp_path.iterdir()) == []


def test_exception_in_the_with_block_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), IndexedWriter(tmp_path / "b", np.uint16) as writer:
        writer.add(np.asarray(SEQS[0], dtype=np.uint16))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_ids_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    writer = IndexedWriter(tmp_path / "c", np.uint16)
    with pytest.raises(ValueError, match="out of range"):
        writer.add(np.asarray([2, 65536, 3], dtype=np.int32))
    with pytest.raises(ValueError, match="out of range"):
        writer.add(np.asarray([-1], dtype=np.int32))
    writer.abort()


def test_token_dtype_for_vocab() -> None:
    assert token_dtype_for_vocab(30522) is np.uint16
    assert token_dtype_for_vocab(65535) is np.uint16
    assert token_dtype_for_vocab(65536) is np.int32
    assert token_dtype_for_vocab(250_002) is np.int32
    with pytest.raises(ValueError):
        token_dtype_for_vocab(0)
