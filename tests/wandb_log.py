"""Reads the records of a W&B offline run file (``RUN_DIR/wandb/offline-run-*/run-ID.wandb``).

wandb 0.31 has no Python reader of its own (its core is in Go): the file is a LevelDB-style log
(a 7-byte header ``:W&B`` + magic + version, 32 KiB blocks, records of checksum, length, type
FULL/FIRST/MIDDLE/LAST) of ``wandb_internal_pb2.Record`` protobufs. The tests read what a user
would later ``wandb sync``: the run record (id, config) and the history rows.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def _payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the tail of a block too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            break
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            yield pending
            pending = b""


def read_run(path: Path) -> dict[str, Any]:
    """``{"id", "config": {key: value}, "history": [row, ...]}`` of one run file."""
    from wandb.proto import wandb_internal_pb2

    out: dict[str, Any] = {"id": None, "config": {}, "history": []}
    for raw in _payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item}  # fmt: skip
            out["history"].append(row)
    return out
