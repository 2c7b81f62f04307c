"""Writing the teacher cache: one shard at a time, every view, under temporary names until done.

:func:`process_shard` runs the teacher over a shard's sequences with the trainer's masks and keeps
the top-k (or sampled) distribution at each masked position; :func:`finalize` checks every shard
and writes ``manifest.json``. The bytes never depend on the number of ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from data_prep.atomic import tmp_name
from data_prep.errors import UserError
from data_prep.indexed import IndexedReader
from data_prep.progress import Progress
from pipeline.cache_teacher import format as tc
from pipeline.cache_teacher.job import Job
from pipeline.data.batch import scored_rows, take_rows
from pipeline.data.loader import collate
from pipeline.data.masking import IGNORE_INDEX, Masker


# --- the work of one shard --------------------------------------------------------------------
class _ViewWriter:
    """The three files of one (shard, view), streamed under temporary names."""

    def __init__(self, out: Path, shard_path: str, view: int) -> None:
        self.final = {kind: tc.shard_file(out, shard_path, view, kind) for kind in tc.FILE_KINDS}
        self.tmp = {kind: tmp_name(path) for kind, path in self.final.items()}
        self.final["ids"].parent.mkdir(parents=True, exist_ok=True)
        self.fh: dict[str, IO[bytes]] = {k: open(self.tmp[k], "wb") for k in ("ids", "val")}  # noqa: SIM115
        self.sha = {kind: hashlib.sha256() for kind in tc.FILE_KINDS}
        self.size = dict.fromkeys(tc.FILE_KINDS, 0)
        self.offsets = [0]

    def add(self, ids: np.ndarray, values: np.ndarray, per_sequence: list[int]) -> int:
        written = 0
        for kind, arr in (("ids", ids), ("val", values)):
            data = np.ascontiguousarray(arr).tobytes()
            self.fh[kind].write(data)
            self.sha[kind].update(data)
            self.size[kind] += len(data)
            written += len(data)
        for n in per_sequence:
            self.offsets.append(self.offsets[-1] + n)
        return written

    def close(self) -> dict[str, Any]:
        """Write the offsets, fsync everything; the files stay under their temporary names."""
        data = np.asarray(self.offsets, dtype=tc.OFFSET_DTYPE).tobytes()
        with open(self.tmp["off"], "wb") as off:
            off.write(data)
            off.flush()
            os.fsync(off.fileno())
        self.sha["off"].update(data)
        self.size["off"] = len(data)
        for fh in self.fh.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        return {
            "rows": self.offsets[-1],
            "files": {
                k: {"bytes": self.size[k], "sha256": self.sha[k].hexdigest()} for k in tc.FILE_KINDS
            },
        }

    def commit(self) -> None:
        for kind in tc.FILE_KINDS:
            os.replace(self.tmp[kind], self.final[kind])

    def abort(self) -> None:
        for fh in self.fh.values():
            fh.close()
        for path in self.tmp.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def sample_rows(
    logp: torch.Tensor, n: int, seed: int, view: int, indices: list[int], per_sequence: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """N draws from exp(logp) per row -> (distinct ids ascending, counts), padded to N slots.

    The uniforms come from numpy, keyed by (seed, view, sample index), so they do not depend on
    the batch, the rank or the device; the inverse-CDF search runs where the logits are.
    """
    u = np.concatenate(
        [
            np.sort(
                np.random.Generator(np.random.PCG64([seed, view, index, tc.SAMPLE_SALT])).random(
                    (r, n)
                ),
                axis=1,
            )
            for index, r in zip(indices, per_sequence)
            if r
        ]
    )
    cdf = torch.cumsum(logp.exp(), dim=-1)
    ut = torch.from_numpy(u).to(device=logp.device, dtype=cdf.dtype) * cdf[:, -1:]
    draws = torch.searchsorted(cdf, ut.contiguous(), right=True).clamp_max(logp.shape[-1] - 1)
    d = draws.cpu().numpy().astype(np.int64)  # sorted along each row: u sorted, cdf monotone
    rows = np.arange(d.shape[0])[:, None]
    new = np.ones(d.shape, dtype=bool)
    new[:, 1:] = d[:, 1:] != d[:, :-1]
    slot = np.cumsum(new, axis=1) - 1
    ids = np.repeat(d[:, :1], n, axis=1)
    ids[rows, slot] = d
    counts = np.zeros(d.shape, dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(rows, d.shape), slot), 1)
    return ids, counts


def process_shard(
    job: Job,
    teacher: Any,
    masker: Masker,
    device: torch.device,
    shard_no: int,
    start_index: int,
    progress: Progress,
) -> None:
    """Every view of one shard: written, renamed into place, then marked done."""
    shard = job.shards[shard_no]
    path = shard.path
    marker = tc.done_marker(job.out, path)
    job.restartable.remove_temporaries([(marker.parent, marker.name[: -len("done.json")])])
    prefix = job.shard_prefix(shard_no)
    reader = IndexedReader(prefix)
    if len(reader) != shard.num_sequences:
        raise UserError(
            f"{prefix}.idx: {len(reader)} sequences, the manifest says {shard.num_sequences}; run python -m data_prep.verify {prefix.parent.parent}"
        )
    expected = tc.masked_counts(reader, job.spec)
    pad_id = job.manifest.special_ids.pad
    s = job.settings
    k, n_views = int(s["k"]), int(s["num_views"])
    id_dt, val_dt = np.dtype(s["id_dtype"]), np.dtype(s["value_dtype"])
    writers: list[_ViewWriter] = []
    views: list[dict[str, Any]] = []
    try:
        for v in range(n_views):
            w = _ViewWriter(job.out, path, v)
            writers.append(w)
            covered = (
                0.0  # top-k: teacher mass inside the K ids; sample: distinct ids, summed over rows
            )
            progress.note = f"shard {path} view {v}"
            for lo in range(0, len(reader), job.batch_size):
                hi = min(len(reader), lo + job.batch_size)
                indices = list(range(start_index + lo, start_index + hi))
                seqs = [reader[i] for i in range(lo, hi)]
                batch = collate(seqs, indices, [v] * len(seqs), masker, job.seed, pad_id)
                labels, attn_cpu = batch["labels"], batch["attention_mask"]
                per_seq = (labels != IGNORE_INDEX).sum(1).tolist()
                if per_seq != expected[lo:hi].tolist():
                    raise RuntimeError(
                        f"{path}: masked counts differ from tc.masked_counts: the masking rule changed"
                    )
                rows = scored_rows(labels, attn_cpu, "masked")
                if rows.numel() == 0:
                    w.add(np.zeros((0, k), id_dt), np.zeros((0, k), val_dt), per_seq)
                    continue
                attn = None if bool(attn_cpu.all()) else attn_cpu.to(device)
                with torch.inference_mode():
                    last, _ = teacher.encode(batch["input_ids"].to(device), attn)
                    logits = teacher.head(take_rows(last, rows.to(device)))
                    logp = torch.log_softmax(logits.float() / job.temperature, dim=-1)
                    if s["mode"] == "topk":
                        top = torch.topk(logp, k, dim=-1)
                        ids = top.indices.cpu().numpy()
                        values = top.values.cpu().numpy()
                        covered += float(top.values.exp().sum().double())
                    else:
                        ids, values = sample_rows(logp, k, job.seed, v, indices, per_seq)
                        covered += float(np.count_nonzero(values))
                nbytes = w.add(ids.astype(id_dt), values.astype(val_dt), per_seq)
                progress.update(nbytes=nbytes, tokens=int(attn_cpu.sum()), items=len(seqs))
            views.append({**w.close(), "covered": covered})
        for w in writers:
            w.commit()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    record = {
        "path": path,
        "num_sequences": len(reader),
        "num_tokens": reader.num_tokens,
        "views": views,
    }
    job.restartable.commit(path, record, [f for w in writers for f in w.final.values()])


# --- finalize ---------------------------------------------------------------------------------
def finalize(job: Job, wait_s: float = 0.0) -> tc.CacheManifest:
    """Check every shard is done and write CACHE_DIR/manifest.json (atomically, last).

    ``wait_s``: how long to wait for markers other nodes wrote to become visible here (network
    file systems cache lookups for a few seconds).
    """
    views = int(job.settings["num_views"])
    shards = job.restartable.finished_records([sh.path for sh in job.shards], wait_s)
    rows = [sum(int(s["views"][v]["rows"]) for s in shards) for v in range(views)]
    total = sum(f["bytes"] for s in shards for view in s["views"] for f in view["files"].values())
    tokens = sum(int(s["num_tokens"]) for s in shards)
    manifest = {
        **job.plan(),
        "shards": shards,
        "totals": {
            "num_sequences": sum(int(s["num_sequences"]) for s in shards),
            "num_tokens": tokens,
            "rows_per_view": rows,
            "bytes": total,
            "bytes_per_masked_position": tc.row_bytes(job.settings),
            "bytes_per_token": total / max(tokens, 1),
            # top-k: mean teacher probability mass (at T) inside the K ids; sample: mean distinct ids
            "mean_covered": sum(v["covered"] for s in shards for v in s["views"])
            / max(sum(rows), 1),
        },
    }
    path = job.restartable.publish(tc.MANIFEST_NAME, manifest)
    return tc.CacheManifest.from_json(manifest, path)
