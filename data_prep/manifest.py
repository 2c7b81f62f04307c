"""DATA_DIR/manifest.json: what the shards are, how they were made, and how to check them.

The format is the dataclasses of this module; :func:`load_manifest` is the one reader (format,
version and every field's type checked, each problem one line naming the file and the field) and
:meth:`DataManifest.to_json` the one writer's layout (format_version 1)::

    format, format_version, seq_len, vocab_size, dtype, special_ids{cls,sep,pad,mask,unk},
    tokenizer{kind, path, vocab_size, special_ids, fingerprint, files{name: sha256}, source},
    settings{...the prep settings that shape the output...},
    splits{train|valid: {num_sequences, num_tokens, shards[{path, num_sequences, num_tokens,
                                                            sha256_bin, sha256_idx}]}},
    stats{documents, bad{counts, locations}, skipped, cut_documents, input_bytes},
    token_counts[vocab_size]   (corpus tokens of the train split, for MLM frequency smoothing)

Shard paths are relative to DATA_DIR and name the prefix of a ``.bin``/``.idx`` pair. A blend of
several folders (``pipeline.data.corpus``) is one manifest whose shards carry their own ``file``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from data_prep.errors import UserError
from data_prep.tokenizer import SpecialIds, TokenizerInfo
from data_prep.versioned import load_versioned, stamp

MANIFEST_NAME = "manifest.json"
FORMAT = "distil-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "valid")
REBUILD = "rebuild the data with python -m data_prep.build_shards (or rerun it with --finalize)"


@dataclass(frozen=True)
class ShardEntry:
    """One ``.bin``/``.idx`` pair of a split."""

    path: str  # the prefix, relative to DATA_DIR (in a blend: a key unique across the sources)
    num_sequences: int
    num_tokens: int
    sha256_bin: str
    sha256_idx: str
    file: str | None = None  # a blend's shard: its prefix, wherever its folder is

    def prefix(self, data_dir: str | os.PathLike[str]) -> Path:
        """The ``.bin``/``.idx`` prefix on disk."""
        return Path(self.file) if self.file is not None else Path(data_dir) / self.path

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.file is None:
            del out["file"]
        return out


@dataclass(frozen=True)
class Split:
    num_sequences: int
    num_tokens: int
    shards: tuple[ShardEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "num_sequences": self.num_sequences,
            "num_tokens": self.num_tokens,
            "shards": [s.to_json() for s in self.shards],
        }


@dataclass(frozen=True)
class DataManifest:
    """The manifest of DATA_DIR (or of a blend of several)."""

    seq_len: int
    vocab_size: int
    dtype: str  # of the tokens in the .bin files: uint16 below 65,536 entries, else int32
    special_ids: SpecialIds
    tokenizer: TokenizerInfo
    settings: dict[str, Any]  # the prep settings (data_prep.prep_plan.PrepSettings)
    splits: dict[str, Split]
    stats: dict[str, Any]
    token_counts: list[int] = field(repr=False)
    blend: list[dict[str, Any]] | None = None  # a blend's sources and weights

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def valid(self) -> Split:
        return self.splits["valid"]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype,
            "special_ids": dataclasses.asdict(self.special_ids),
            "tokenizer": self.tokenizer.to_json(),
            "settings": self.settings,
            "splits": {name: split.to_json() for name, split in self.splits.items()},
            "stats": self.stats,
            "token_counts": list(self.token_counts),
        }
        if self.blend is not None:
            body["blend"] = self.blend
        return stamp(body, FORMAT, FORMAT_VERSION)

    @staticmethod
    def from_json(body: dict[str, Any], where: str | os.PathLike[str]) -> DataManifest:
        """The manifest of a JSON object; a field that is missing or of the wrong type is one
        :class:`UserError` naming ``where`` and the field."""
        r = _Fields(body, str(where))
        sid = SpecialIds(**{k: r.integer(f"special_ids.{k}") for k in _SPECIAL})
        tok = r.obj("tokenizer")
        tok_ids = SpecialIds(**{k: r.integer(f"tokenizer.special_ids.{k}") for k in _SPECIAL})
        tokenizer = TokenizerInfo(
            kind=r.text("tokenizer.kind"),
            path=r.text("tokenizer.path"),
            vocab_size=r.integer("tokenizer.vocab_size"),
            special_ids=tok_ids,
            fingerprint=r.text("tokenizer.fingerprint"),
            files=dict(tok.get("files", {})),
            source=str(tok.get("source", "")),
        )
        splits = {}
        for name in SPLITS:
            shards = []
            for i in range(len(r.items(f"splits.{name}.shards"))):
                key = f"splits.{name}.shards.{i}"
                shards.append(
                    ShardEntry(
                        path=r.inside(f"{key}.path"),
                        num_sequences=r.integer(f"{key}.num_sequences"),
                        num_tokens=r.integer(f"{key}.num_tokens"),
                        sha256_bin=r.text(f"{key}.sha256_bin"),
                        sha256_idx=r.text(f"{key}.sha256_idx"),
                    )
                )
            splits[name] = Split(
                r.integer(f"splits.{name}.num_sequences"),
                r.integer(f"splits.{name}.num_tokens"),
                tuple(shards),
            )
        return DataManifest(
            seq_len=r.integer("seq_len"),
            vocab_size=r.integer("vocab_size"),
            dtype=r.text("dtype"),
            special_ids=sid,
            tokenizer=tokenizer,
            settings=r.obj("settings"),
            splits=splits,
            stats=r.obj("stats"),
            token_counts=[int(c) for c in r.items("token_counts")],
            blend=body.get("blend"),
        )


_SPECIAL = ("cls", "sep", "pad", "mask", "unk")


class _Fields:
    """Typed access to dotted fields of a JSON object, each failure one line."""

    def __init__(self, body: dict[str, Any], where: str) -> None:
        self.body, self.where = body, where

    def get(self, dotted: str) -> Any:
        value: Any = self.body
        for part in dotted.split("."):
            if isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise UserError(f"{self.where}: field {dotted} is missing; {REBUILD}")
        return value

    def _typed(self, dotted: str, kind: type, name: str) -> Any:
        value = self.get(dotted)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{self.where}: field {dotted} is not {name} ({value!r}); {REBUILD}")
        return value

    def integer(self, dotted: str) -> int:
        return int(self._typed(dotted, int, "an integer"))

    def text(self, dotted: str) -> str:
        return str(self._typed(dotted, str, "a string"))

    def inside(self, dotted: str) -> str:
        """A relative path that stays inside the folder (no absolute path, no ``..``)."""
        value = self.text(dotted)
        parts = PurePosixPath(value).parts
        if not parts or PurePosixPath(value).is_absolute() or ".." in parts or "\\" in value:
            raise UserError(
                f"{self.where}: field {dotted} is {value!r}, a path that leaves the data folder; "
                f"{REBUILD}"
            )
        return value

    def obj(self, dotted: str) -> dict[str, Any]:
        return dict(self._typed(dotted, dict, "an object"))

    def items(self, dotted: str) -> list[Any]:
        return list(self._typed(dotted, list, "a list"))


def manifest_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / MANIFEST_NAME


def load_manifest(data_dir: str | os.PathLike[str]) -> DataManifest:
    """Read and check DATA_DIR/manifest.json; every problem is a one-line UserError."""
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
    body = load_versioned(
        path, FORMAT, FORMAT_VERSION, "rebuild the data with this version of distil"
    )
    return DataManifest.from_json(body, path)


def manifest_fingerprint(data_dir: str | os.PathLike[str]) -> str:
    """sha256 of manifest.json: it names every shard's sha256, so it identifies the data."""
    return hashlib.sha256(manifest_path(data_dir).read_bytes()).hexdigest()
