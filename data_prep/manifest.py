"""DATA_DIR/manifest.json: what the shards are, how they were made, and how to check them.

Layout (format_version 1)::

    format, format_version, seq_len, vocab_size, dtype, special_ids{cls,sep,pad,mask,unk},
    tokenizer{kind, path, vocab_size, special_ids, fingerprint, files{name: sha256}},
    settings{...the prep settings that shape the output...},
    splits{train|valid: {num_sequences, num_tokens, shards[{path, num_sequences, num_tokens,
                                                            sha256_bin, sha256_idx}]}},
    stats{documents, bad{counts, locations}, input_bytes},
    token_counts[vocab_size]   (corpus tokens of the train split, for MLM frequency smoothing)

Shard paths are relative to DATA_DIR and name the prefix of a ``.bin``/``.idx`` pair.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from data_prep.errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT = "distil-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")


def manifest_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / MANIFEST_NAME


def load_manifest(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check a manifest; every problem is a one-line UserError."""
    path = manifest_path(data_dir)
    if not Path(data_dir).is_dir():
        raise UserError(
            f"{data_dir}: no such data folder; build it with python -m data_prep.build_shards"
        )
    if not path.is_file():
        raise UserError(
            f"{path}: missing; the data prep did not finish. Rerun python -m data_prep.build_shards "
            "(or --finalize after an array job)"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); rerun build_shards --finalize") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')}, expected "
            f"{FORMAT!r} v{FORMAT_VERSION}; rebuild the data with this version of distil"
        )
    return manifest


def shard_prefix(data_dir: str | os.PathLike[str], shard: dict[str, Any]) -> Path:
    """The ``.bin``/``.idx`` prefix of a manifest's shard entry: ``path`` under DATA_DIR, or the
    entry's own ``file`` (the shards of a blend of several folders carry it)."""
    return Path(shard["file"]) if "file" in shard else Path(data_dir) / shard["path"]


def manifest_fingerprint(data_dir: str | os.PathLike[str]) -> str:
    """sha256 of manifest.json: it names every shard's sha256, so it identifies the data."""
    return hashlib.sha256(manifest_path(data_dir).read_bytes()).hexdigest()
