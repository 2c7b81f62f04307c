"""The trainer's side of the teacher cache: checked against the run, read by global sample index.

:func:`open_cache` refuses a cache built for another run (teacher, tokenizer, data, masking, seed,
temperature), naming each difference and the command that rebuilds it. :class:`TeacherCache`
memory-maps the files (see :mod:`pipeline.cache_teacher.format`) and returns a micro-batch's
targets in the data-loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.errors import UserError
from data_prep.hub import ModelRef
from pipeline.cache_teacher.format import (
    MANIFEST_NAME,
    OFFSET_DTYPE,
    CacheManifest,
    done_marker,
    identity,
    identity_differences,
    load_cache_manifest,
    rebuild_command,
    shard_file,
    teacher_fingerprint,
)
from pipeline.config.schema import Config
from pipeline.data.corpus import Corpus
from pipeline.data.masking import IGNORE_INDEX, masking_spec


@dataclass
class _View:
    ids: np.ndarray  # [rows, K]
    values: np.ndarray  # [rows, K]
    offsets: np.ndarray  # [n + 1]


def _map(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class TeacherCache:
    """Memory-mapped cached teacher targets, looked up by (global sample index, view)."""

    def __init__(self, cache_dir: str | Path, manifest: CacheManifest) -> None:
        self.dir = Path(cache_dir)
        self.manifest = manifest
        s = manifest.settings
        self.mode: str = s["mode"]
        self.k = int(s["k"])
        self.num_views = int(s["num_views"])
        self.samples = int(s.get("samples", 0))
        self.vocab = int(s["teacher_vocab_size"])
        self.id_dtype = np.dtype(s["id_dtype"])
        self.value_dtype = np.dtype(s["value_dtype"])
        self.shards: list[dict[str, Any]] = manifest.shards
        counts = np.array([sh["num_sequences"] for sh in self.shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._views: dict[tuple[int, int], _View] = {}
        self.notes: list[str] = []
        self._check_files()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _check_files(self) -> None:
        """Every file present with the size its rows imply (cheap: no reading)."""
        for sh in self.shards:
            if len(sh["views"]) != self.num_views:
                raise UserError(
                    f"{self.dir}/{MANIFEST_NAME}: shard {sh['path']} has {len(sh['views'])} views, "
                    f"expected {self.num_views}; rebuild the cache"
                )
            for v, view in enumerate(sh["views"]):
                rows = int(view["rows"])
                expected = {
                    "ids": rows * self.k * self.id_dtype.itemsize,
                    "val": rows * self.k * self.value_dtype.itemsize,
                    "off": (sh["num_sequences"] + 1) * OFFSET_DTYPE.itemsize,
                }
                for kind, size in expected.items():
                    path = shard_file(self.dir, sh["path"], v, kind)
                    if not path.is_file():
                        raise UserError(
                            f"{path}: missing from the teacher cache; rebuild it (delete {done_marker(self.dir, sh['path'])} and rerun cache_teacher)"
                        )
                    if path.stat().st_size != size:
                        raise UserError(
                            f"{path}: {path.stat().st_size} bytes, the cache manifest implies {size} "
                            f"(K={self.k}); the file is truncated or from another cache: delete "
                            f"{done_marker(self.dir, sh['path'])} and rerun cache_teacher"
                        )

    def _view(self, shard: int, view: int) -> _View:
        key = (shard, view)
        found = self._views.get(key)
        if found is None:
            sh = self.shards[shard]
            rows = int(sh["views"][view]["rows"])
            found = _View(
                ids=_map(
                    shard_file(self.dir, sh["path"], view, "ids"), self.id_dtype, rows * self.k
                ).reshape(rows, self.k),
                values=_map(
                    shard_file(self.dir, sh["path"], view, "val"), self.value_dtype, rows * self.k
                ).reshape(rows, self.k),
                offsets=_map(
                    shard_file(self.dir, sh["path"], view, "off"),
                    OFFSET_DTYPE,
                    sh["num_sequences"] + 1,
                ),
            )
            self._views[key] = found
        return found

    def rows_of(self, index: int, view: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids [r, K], values [r, K]) of one sample's masked positions, as stored."""
        if not 0 <= view < self.num_views:
            raise ValueError(f"view {view} outside the cache's 0..{self.num_views - 1}")
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        local = index - int(self._starts[shard])
        v = self._view(shard, view)
        lo, hi = int(v.offsets[local]), int(v.offsets[local + 1])
        return v.ids[lo:hi], v.values[lo:hi]

    def to_logp(self, values: np.ndarray) -> torch.Tensor:
        """Stored values -> teacher log-probs at temperature T (float32; count 0 -> -inf)."""
        t = torch.from_numpy(np.ascontiguousarray(values))
        if self.mode == "sample":
            return torch.log(t.float() / self.samples)
        return t.float()

    def batch_targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [N, K] int64, log-probs [N, K] float32) of a collated micro-batch's masked
        positions, on the CPU; cheap enough for a data-loader worker (memory-mapped reads)."""
        per_sample = (batch["labels"] != IGNORE_INDEX).sum(1).tolist()
        ids, values = [], []
        for b, (index, view) in enumerate(
            zip(batch["sample_index"].tolist(), batch["view"].tolist())
        ):
            i, v = self.rows_of(int(index), int(view))
            if len(i) != per_sample[b]:
                raise UserError(
                    f"{self.dir}: sample {index} (view {view}) has {len(i)} cached masked positions, "
                    f"the trainer masked {per_sample[b]}; the cache does not match this run's masks, "
                    "rebuild it with python -m pipeline.cache_teacher"
                )
            ids.append(i)
            values.append(v)
        id_arr = np.concatenate(ids) if ids else np.zeros((0, self.k), self.id_dtype)
        if id_arr.size and (int(id_arr.max()) >= self.vocab or int(id_arr.min()) < 0):
            raise UserError(  # on a GPU, a device-side assert in the loss instead of this line
                f"{self.dir}: cached token ids span {int(id_arr.min())}..{int(id_arr.max())}, "
                f"outside the teacher's vocabulary of {self.vocab}; the cache is damaged: "
                "rebuild it with python -m pipeline.cache_teacher"
            )
        val_arr = np.concatenate(values) if values else np.zeros((0, self.k), self.value_dtype)
        return torch.from_numpy(id_arr.astype(np.int64)), self.to_logp(val_arr)


def open_cache(cfg: Config, teacher: ModelRef, cache_dir: str, corpus: Corpus) -> TeacherCache:
    """The run's teacher cache, after checking that it was built for exactly this run.

    Refuses (one-line :class:`UserError`) a cache of another teacher, tokenizer, data, seq_len,
    masking, seed or temperature, naming each difference and the command that rebuilds it, and
    a run that scores positions the cache does not hold (``loss.ce_positions all``).
    """
    folder = Path(cache_dir)
    cm = load_cache_manifest(folder)
    settings = cm.settings
    if cfg.loss.ce_positions != "masked":
        raise UserError(
            f"--teacher-cache {folder}: the cache holds the teacher's logits at masked positions only, "
            "but loss.ce_positions is 'all'; set --loss.ce_positions masked or train without the cache"
        )
    manifest = corpus.manifest
    spec = masking_spec(manifest, cfg.masking)
    run = identity(
        teacher_fingerprint(teacher.path)["fingerprint"],
        corpus.content_fingerprint,
        manifest,
        spec,
        cfg.train.seed,
        cfg.loss.temperature,
    )
    diffs = identity_differences(cm.identity, run)
    if diffs:
        cmd = rebuild_command(
            " ".join(s.path for s in corpus.sources),
            teacher.name,  # as the user named it (a hub ID stays an ID)
            settings,
            spec.fingerprint(),
            cfg.train.seed,
            cfg.loss.temperature,
        )
        raise UserError(
            f"--teacher-cache {folder} was built for another run; differs: {'; '.join(diffs)}. "
            f"Rebuild it for this run with: {cmd} (or run with the cache's settings)"
        )
    cache = TeacherCache(folder, cm)
    train = manifest.train
    if len(cache) != train.num_sequences:  # the data fingerprint matched: a broken cache
        raise UserError(
            f"{folder}: {len(cache)} sequences cached, the data has {train.num_sequences}; rebuild the cache"
        )
    what = (
        f"top-{cache.k} {settings['value_dtype']} log-probs"
        if cache.mode == "topk"
        else f"{cache.samples} sampled tokens per position"
    )
    cache.notes.append(
        f"teacher cache {folder}: {what}, {cache.num_views} mask view(s); epoch e uses view e mod {cache.num_views}"
    )
    steps = cfg.train.max_steps
    epochs = steps * cfg.train.global_batch_size / max(len(cache), 1) if steps else cfg.train.epochs
    if epochs > cache.num_views:
        cache.notes.append(
            f"{math.ceil(epochs)} epochs over {cache.num_views} cached view(s): from epoch {cache.num_views} on, "
            "samples see the masks (and teacher targets) of earlier epochs again"
        )
    return cache
