"""Tabular sources: parquet files (cut at row groups), ``save_to_disk`` folders and ``hf:``
datasets (cut at rows), streamed ``hf:`` datasets (cut at their shards); read in row batches."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from data_prep.errors import UserError
from data_prep.sources.compressed import open_binary
from data_prep.sources.units import WorkUnit

BATCH_ROWS = 1024
SPOOL_MARGIN = 1 << 30  # what a spool leaves free in the temporary folder


def _spool(path: str, compression: str, stack: contextlib.ExitStack) -> Any:
    """The decompressed bytes of a compressed parquet file in an unnamed temporary file (parquet
    needs random access), in TMPDIR; refused in one line before it would fill that disk."""
    folder = tempfile.gettempdir()
    room = shutil.disk_usage(folder).free - SPOOL_MARGIN
    handle = stack.enter_context(tempfile.TemporaryFile(dir=folder))  # noqa: SIM115
    written = 0
    with open_binary(path, compression) as fh:
        while chunk := fh.read(1 << 22):
            written += len(chunk)
            if written > room:
                raise UserError(
                    f"{path}: decompressed, it needs more than the {max(room, 0) / 2**30:.1f} GiB "
                    f"free in {folder} (TMPDIR); decompress it where there is room and pass the "
                    ".parquet file (parquet compresses its columns itself), or set TMPDIR"
                )
            handle.write(chunk)
    handle.seek(0)
    return handle


def _parquet_file(path: str, compression: str, stack: contextlib.ExitStack) -> Any:
    import pyarrow.parquet as pq

    handle: Any = _spool(path, compression, stack) if compression else path
    try:
        return pq.ParquetFile(handle)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None


def parquet_row_groups(path: str, unit_bytes: int) -> tuple[list[tuple[int, int]], int]:
    """Consecutive row groups of about ``unit_bytes`` (uncompressed), and the file's total."""
    with contextlib.ExitStack() as stack:
        meta = _parquet_file(path, "", stack).metadata
    groups: list[tuple[int, int]] = []
    start, size, total = 0, 0, 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i).total_byte_size
        if i > start and size + rg > unit_bytes:
            groups.append((start, i))
            start, size = i, 0
        size += rg
        total += rg
    groups.append((start, max(meta.num_row_groups, start)))
    return groups, total


def load_arrow(path: str, split: str) -> Any:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path}: no split '{split}' (has {', '.join(ds)}); pass --hf-split")
        ds = ds[split]
    return ds


def load_hf(spec: str, split: str, streaming: bool) -> Any:
    import datasets

    name, _, config = spec[3:].partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split, streaming=streaming)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{spec}: datasets.load_dataset failed ({first}); check the name/config, the network "
            "or HF_DATASETS_OFFLINE and the cache"
        ) from None


def dataset_rows(spec: str, kind: str, split: str) -> int:
    ds = load_arrow(spec, split) if kind == "arrow" else load_hf(spec, split, False)
    return len(ds)


def hf_stream_shards(spec: str, split: str) -> int:
    return int(load_hf(spec, split, True).num_shards)


def _check_column(names: list[str], field: str, source: str) -> None:
    if field not in names:
        raise UserError(
            f"{source}: no column '{field}' (has {', '.join(names)}); pass --text-field"
        )


def _parquet_batches(unit: WorkUnit, field: str) -> Iterator[tuple[int, list[Any]]]:
    with contextlib.ExitStack() as stack:
        pf = _parquet_file(unit.source, unit.compression, stack)
        _check_column(pf.schema_arrow.names, field, unit.source)
        meta = pf.metadata
        end = meta.num_row_groups if unit.end < 0 else unit.end
        row = sum(meta.row_group(i).num_rows for i in range(unit.start))
        groups = list(range(unit.start, end))
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=[field]):
            values = batch.column(0).to_pylist()
            yield row, values
            row += len(values)


def row_batches(unit: WorkUnit, field: str, split: str) -> Iterator[tuple[int, list[Any]]]:
    """(index of the first row, text values) of a table unit, in order."""
    if unit.kind == "parquet":
        yield from _parquet_batches(unit, field)
        return
    if unit.kind == "hf-stream":
        ds = load_hf(unit.source, split, True).shard(num_shards=unit.end, index=unit.start)
        row, values = 0, []
        for ex in ds:
            values.append(ex.get(field))
            if len(values) == BATCH_ROWS:
                yield row, values
                row, values = row + len(values), []
        if values:
            yield row, values
        return
    ds = (
        load_arrow(unit.source, split)
        if unit.kind == "arrow"
        else load_hf(unit.source, split, False)
    )
    _check_column(ds.column_names, field, unit.source)
    part = ds.select_columns([field]).select(range(unit.start, unit.end))
    row = unit.start
    for batch in part.iter(batch_size=BATCH_ROWS):
        yield row, batch[field]
        row += len(batch[field])
