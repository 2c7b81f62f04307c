"""The teacher logits cache on disk: the one definition of its files, dtypes and identity.

Layout, for every train shard ``P`` of DATA_DIR (e.g. ``train/00000-000``) and every mask view
``v`` in ``0..V-1``::

    CACHE_DIR/P.v{v}.ids   [rows, K] token ids, uint16 when the teacher's vocabulary < 65,536 else int32
    CACHE_DIR/P.v{v}.val   [rows, K] top-k: log-probs at temperature T (float16, or float32);
                                     sample: how many of the N draws hit each id (uint8 / uint16)
    CACHE_DIR/P.v{v}.off   [n + 1] int64: sequence i of the shard owns rows off[i] .. off[i+1]
    CACHE_DIR/P.done.json  written last: the shard is complete (rows, bytes and sha256 per file)
    CACHE_DIR/plan.json    the settings of the job (a restart must use the same ones)
    CACHE_DIR/manifest.json  written when every shard is done; the trainer reads only this

A row is one masked position: the masks are :class:`pipeline.data.masking.Masker` of
``(seed, view, global sample index)``, exactly what the trainer draws at epoch ``e`` with
``view = e mod V``. The rows of a sequence are its masked positions in ascending order, which is
the order of the trainer's scored rows, so a lookup is a slice per sample.

Values are normalised over the *whole* vocabulary (``log_softmax(logits / T)``), so the teacher's
tail mass ``1 - sum(exp(logp))`` is known and :func:`pipeline.model.losses.sparse_kd_loss` keeps it as
one bucket; with K = vocabulary size the loss equals the online loss. Sampled rows (RS-KD style:
N draws from ``softmax(logits / T)``) hold the distinct ids in ascending order with their counts;
unused slots repeat the first id with count 0 (log-prob -inf, weight exactly 0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from data_prep.errors import UserError
from data_prep.indexed import IndexedReader, sha256_file, token_dtype_for_vocab
from data_prep.manifest import DataManifest
from data_prep.versioned import load_versioned
from pipeline.data.masking import MaskingSpec

FORMAT = "distil-teacher-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PLAN_NAME = "plan.json"
MODES = ("topk", "sample")
FILE_KINDS = ("ids", "val", "off")
OFFSET_DTYPE = np.dtype(np.int64)
VALUE_DTYPES: dict[str, np.dtype] = {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32)}
SAMPLE_SALT = (
    0x5EED_CA5E  # keeps the sampling stream apart from the masking stream of (seed, view, index)
)
TEACHER_FILE_PATTERNS = ("config.json", "*.safetensors", "pytorch_model*.bin")
# The keys of the identity the trainer checks, with how a user names each of them.
IDENTITY_LABELS = {
    "teacher": "teacher weights (--teacher)",
    "tokenizer": "tokenizer",
    "data_manifest": "data (DATA_DIR/manifest.json)",
    "seq_len": "seq_len",
    "masking": "masking",
    "seed": "train.seed",
    "temperature": "loss.temperature",
}


# --- file names and dtypes -------------------------------------------------------------------
def shard_file(cache_dir: str | Path, shard_path: str, view: int, kind: str) -> Path:
    assert kind in FILE_KINDS, kind
    return Path(cache_dir) / f"{shard_path}.v{view}.{kind}"


def done_marker(cache_dir: str | Path, shard_path: str) -> Path:
    return Path(cache_dir) / f"{shard_path}.done.json"


def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id of the teacher's head fits, else int32 (never truncated)."""
    return np.dtype(token_dtype_for_vocab(vocab_size))


def value_dtype(mode: str, values: str, samples: int) -> np.dtype:
    """top-k: fp16 (default) or fp32 log-probs; sample: the smallest unsigned int holding N."""
    if mode == "sample":
        return np.dtype(np.uint8 if samples < 2**8 else np.uint16)
    return VALUE_DTYPES[values]


def row_bytes(settings: dict[str, Any]) -> int:
    """Bytes of one cached row (one masked position): K ids and K values."""
    k = int(settings["k"])
    return k * (
        np.dtype(settings["id_dtype"]).itemsize + np.dtype(settings["value_dtype"]).itemsize
    )


def masked_counts(
    reader: IndexedReader, spec: MaskingSpec, chunk_tokens: int = 1 << 24
) -> np.ndarray:
    """Masked positions of every sequence of a shard, without drawing masks.

    Same rule as :class:`pipeline.data.masking.Masker`: ``max(1, round(p * n))`` of the ``n`` tokens that
    are not special, 0 when there are none (``np.round`` is Python's round-half-even). The writer
    checks every sequence against it, so a change of the rule cannot go unnoticed.
    """
    special = np.zeros(max(spec.vocab_size, 1), dtype=bool)
    special[list(spec.special_ids)] = True
    lengths = reader.lengths.astype(np.int64)
    specials = np.zeros(len(lengths), dtype=np.int64)
    starts = reader.pointers // reader.dtype.itemsize
    tokens = reader.tokens()
    i = 0
    while i < len(lengths):  # chunks of whole sequences: memory stays bounded on big shards
        j = i + max(1, int(np.searchsorted(np.cumsum(lengths[i:]), chunk_tokens)))
        j = min(j, len(lengths))
        lo, hi = int(starts[i]), int(starts[j - 1] + lengths[j - 1])
        flags = np.concatenate([[0], np.cumsum(special[np.asarray(tokens[lo:hi])], dtype=np.int64)])
        rel = starts[i:j] - lo
        specials[i:j] = flags[rel + lengths[i:j]] - flags[rel]
        i = j
    candidates = lengths - specials
    counts = np.maximum(1, np.round(spec.mlm_probability * candidates)).astype(np.int64)
    return np.where(candidates > 0, counts, 0)


# --- fingerprints and identity ----------------------------------------------------------------
def teacher_fingerprint(path: str | Path) -> dict[str, Any]:
    """sha256 of the teacher's config.json and weight files, and one fingerprint over them.

    File names, not folders, enter the fingerprint: a copy of the teacher elsewhere matches.
    """
    folder = Path(path)
    files: dict[str, str] = {}
    for pattern in TEACHER_FILE_PATTERNS:
        for f in sorted(folder.glob(pattern)):
            files[f.name] = sha256_file(f)
    if not any(n != "config.json" for n in files):
        raise UserError(f"{folder}: no teacher weights (*.safetensors or pytorch_model*.bin)")
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, "files": files}


def identity(
    teacher_fp: str,
    data_fp: str,
    manifest: DataManifest,
    spec: MaskingSpec,
    seed: int,
    temperature: float,
) -> dict[str, Any]:
    """What the cached values depend on and the trainer must match, key by key."""
    return {
        "teacher": teacher_fp,
        "tokenizer": manifest.tokenizer.fingerprint,
        "data_manifest": data_fp,
        "seq_len": manifest.seq_len,
        "masking": spec.fingerprint(),
        "seed": int(seed),
        "temperature": float(temperature),
    }


def identity_differences(cached: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """'what (cache X, run Y)' for every identity key that differs (masking field by field)."""
    out = []
    for key, label in IDENTITY_LABELS.items():
        a, b = cached.get(key), run.get(key)
        if a == b:
            continue
        if key == "masking" and isinstance(a, dict) and isinstance(b, dict):
            for field in sorted(set(a) | set(b)):
                if a.get(field) != b.get(field):
                    out.append(f"masking.{field} (cache {a.get(field)}, run {b.get(field)})")
        elif key in ("teacher", "tokenizer", "data_manifest"):
            out.append(f"{label} (cache {str(a)[:12]}, run {str(b)[:12]})")
        else:
            out.append(f"{label} (cache {a}, run {b})")
    return out


def rebuild_command(
    data: str,
    teacher: str,
    settings: dict[str, Any],
    masking: dict[str, Any],
    seed: int,
    temperature: float,
) -> str:
    """The cache_teacher command that builds a cache for these run settings."""
    parts = [
        "python -m pipeline.cache_teacher",
        f"--data {data} --teacher {teacher} --output NEW_CACHE_DIR",
        (
            f"--mode sample --samples {settings['samples']}"
            if settings.get("mode") == "sample"
            else f"--top-k {settings.get('k')}"
        ),
        f"--views {settings.get('num_views')} --train.seed {seed} --loss.temperature {temperature}",
    ]
    for name in ("mlm_probability", "mask_fraction", "random_fraction", "smoothing"):
        parts.append(f"--masking.{name} {masking.get(name)}")
    return " ".join(parts)


# --- the manifest -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheManifest:
    """CACHE_DIR/manifest.json: the plan of the job (identity, settings, sources), the done
    record of every shard (rows, bytes and sha256 of each view's files) and the totals."""

    identity: dict[str, Any]
    settings: dict[str, Any]
    shards: list[dict[str, Any]]
    totals: dict[str, Any]

    @staticmethod
    def from_json(body: dict[str, Any], where: Path) -> CacheManifest:
        try:
            manifest = CacheManifest(
                dict(body["identity"]), dict(body["settings"]), list(body["shards"]),
                dict(body["totals"]),
            )  # fmt: skip
            paths = [str(shard["path"]) for shard in manifest.shards]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{where}: a required field is missing or malformed ({exc!r}); rerun "
                "cache_teacher --finalize"
            ) from None
        for path in paths:
            parts = PurePosixPath(path).parts
            if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
                raise UserError(
                    f"{where}: shard path {path!r} leaves the cache folder; rebuild the cache"
                )
        return manifest


def load_cache_manifest(cache_dir: str | Path) -> CacheManifest:
    folder = Path(cache_dir)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise UserError(
            f"--teacher-cache {folder}: no such folder; build it with python -m pipeline.cache_teacher"
        )
    if not path.is_file():
        hint = (
            "the cache job has not finished: rerun the same python -m pipeline.cache_teacher command "
            "(finished shards are kept), or --finalize after a multi-task job"
            if (folder / PLAN_NAME).is_file()
            else "not a teacher cache; build one with python -m pipeline.cache_teacher"
        )
        raise UserError(f"{path}: missing; {hint}")
    body = load_versioned(
        path,
        FORMAT,
        FORMAT_VERSION,
        "rebuild the cache with this version of distil (or rerun cache_teacher --finalize)",
    )
    return CacheManifest.from_json(body, path)
