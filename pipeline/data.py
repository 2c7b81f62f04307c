"""The trainer's side of the data: shard reader, global sample order, micro-batches.

* :class:`ShardedDataset` memory-maps every shard of a split listed in ``manifest.json`` and
  returns sequences by global index (zero-copy views).
* :func:`sample_at` is the sample order, a pure function: the stream of samples is the
  concatenation of per-epoch permutations drawn from (seed, epoch); stream position ``p`` is
  sample ``perm(seed, p // N)[p % N]`` of epoch ``p // N``. The position is ``consumed_samples``.
* A global batch is positions ``[c, c + B)``; rank ``r`` of ``W`` takes, for micro-step ``k`` of
  ``G``, positions ``c + (k * W + r) * b ... + b``. The set of samples (and their masks) in a global
  batch never depends on how it is split, so a resume at another world size sees the same batches.
* :class:`MicroBatches` is a map-style dataset of this rank's micro-batches from a start step,
  built in DataLoader workers (tokens, masking, padding), pinned when a GPU is used.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.errors import UserError
from data_prep.indexed import IndexedReader
from data_prep.manifest import load_manifest
from pipeline.masking import IGNORE_INDEX, Masker, MaskingSpec


class ShardedDataset:
    """All sequences of one split, by global index, memory-mapped."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        split: str = "train",
        manifest: dict[str, Any] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.manifest = manifest if manifest is not None else load_manifest(data_dir)
        if split not in self.manifest["splits"]:
            raise UserError(f"{self.data_dir}/manifest.json: no split '{split}'")
        info = self.manifest["splits"][split]
        self.readers: list[IndexedReader] = []
        for shard in info["shards"]:
            reader = IndexedReader(self.data_dir / shard["path"])
            if len(reader) != shard["num_sequences"] or reader.num_tokens != shard["num_tokens"]:
                raise UserError(
                    f"{self.data_dir / shard['path']}.idx: {len(reader)} sequences / {reader.num_tokens} "
                    f"tokens, the manifest says {shard['num_sequences']} / {shard['num_tokens']}; "
                    f"run python -m data_prep.verify {self.data_dir}"
                )
            self.readers.append(reader)
        counts = np.array([len(r) for r in self.readers], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.seq_len = int(self.manifest["seq_len"])
        self.num_tokens = int(info["num_tokens"])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.readers[shard][index - int(self._starts[shard])]


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64([seed, epoch, 0x5A4D])).permutation(n)


def sample_at(position: int, seed: int, num_samples: int) -> tuple[int, int]:
    """(epoch, sample index) at stream position ``position``."""
    epoch, offset = divmod(position, num_samples)
    return epoch, int(_permutation(seed, epoch, num_samples)[offset])


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is split: B = micro x grad_accum x world_size."""

    global_batch: int
    micro_batch: int
    grad_accum: int
    world_size: int
    rank: int

    def positions(self, consumed: int, micro_step: int) -> range:
        start = consumed + (micro_step * self.world_size + self.rank) * self.micro_batch
        return range(start, start + self.micro_batch)


def collate(
    seqs: list[np.ndarray],
    indices: list[int],
    views: list[int],
    masker: Masker,
    seed: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Mask and pad sequences into a batch: input_ids, attention_mask, labels, sample_index, view."""
    width = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    labels = np.full((len(seqs), width), IGNORE_INDEX, dtype=np.int64)
    attention = np.zeros((len(seqs), width), dtype=np.int64)
    for row, (seq, index, view) in enumerate(zip(seqs, indices, views)):
        masked, lab = masker(seq, seed, view, index)
        input_ids[row, : len(seq)] = masked
        labels[row, : len(seq)] = lab
        attention[row, : len(seq)] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "labels": torch.from_numpy(labels),
        "sample_index": torch.tensor(indices, dtype=torch.int64),
        "view": torch.tensor(views, dtype=torch.int64),
    }


class MicroBatches(torch.utils.data.Dataset):
    """Item ``i`` = this rank's micro-batch ``i % G`` of step ``start_step + i // G``.

    Pure: it depends only on the data, the layout, the seed and ``start_consumed``, so DataLoader
    workers can build items in any order and a resume starts exactly where the run stopped.
    """

    def __init__(
        self,
        dataset: ShardedDataset,
        layout: BatchLayout,
        masker: Masker,
        seed: int,
        start_consumed: int,
        num_steps: int,
        pad_id: int,
        num_views: int = 0,
        cache: Any = None,
    ) -> None:
        self.dataset = dataset
        self.layout = layout
        self.masker = masker
        self.seed = seed
        self.start_consumed = start_consumed
        self.num_steps = num_steps
        self.pad_id = pad_id
        self.num_views = num_views
        self.cache = cache  # a TeacherCache: its targets are read here, in the worker

    def __len__(self) -> int:
        return self.num_steps * self.layout.grad_accum

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step, micro = divmod(i, self.layout.grad_accum)
        consumed = self.start_consumed + step * self.layout.global_batch
        seqs, indices, views = [], [], []
        for pos in self.layout.positions(consumed, micro):
            epoch, index = sample_at(pos, self.seed, len(self.dataset))
            seqs.append(self.dataset[index])
            indices.append(index)
            views.append(epoch % self.num_views if self.num_views else epoch)
        batch = collate(seqs, indices, views, self.masker, self.seed, self.pad_id)
        if self.cache is not None:
            batch["teacher_ids"], batch["teacher_logp"] = self.cache.batch_targets(batch)
        return batch


class EvalBatches(torch.utils.data.Dataset):
    """Validation micro-batches: the first ``num_samples`` valid sequences, view 0, rank r taking
    every W-th one, so summed metrics do not depend on the world size."""

    def __init__(
        self,
        dataset: ShardedDataset,
        masker: Masker,
        seed: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        num_samples: int,
        pad_id: int,
    ) -> None:
        self.dataset, self.masker, self.seed, self.pad_id = dataset, masker, seed, pad_id
        self.indices = list(range(min(num_samples, len(dataset))))[rank::world_size]
        self.micro_batch = micro_batch

    def __len__(self) -> int:
        return (len(self.indices) + self.micro_batch - 1) // self.micro_batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        idx = self.indices[i * self.micro_batch : (i + 1) * self.micro_batch]
        seqs = [self.dataset[j] for j in idx]
        return collate(seqs, idx, [0] * len(idx), self.masker, self.seed, self.pad_id)


def masking_spec(
    manifest: dict[str, Any],
    mlm_probability: float,
    mask_fraction: float,
    random_fraction: float,
    smoothing: float,
) -> MaskingSpec:
    sid = manifest["special_ids"]
    return MaskingSpec(
        vocab_size=int(manifest["vocab_size"]),
        mask_id=int(sid["mask"]),
        special_ids=tuple(sorted({sid["cls"], sid["sep"], sid["pad"], sid["mask"]})),
        mlm_probability=mlm_probability,
        mask_fraction=mask_fraction,
        random_fraction=random_fraction,
        smoothing=smoothing,
    )


def make_masker(manifest: dict[str, Any], spec: MaskingSpec) -> Masker:
    counts = np.asarray(manifest["token_counts"], dtype=np.int64) if spec.smoothing > 0 else None
    return Masker(spec, counts)


def _ignore_signals(_worker_id: int) -> None:
    """Workers leave preemption signals to their rank: srun and scancel signal every process of
    a task, and a worker killed by SIGTERM/SIGUSR1 would take its rank down before the checkpoint."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def loader(
    dataset: torch.utils.data.Dataset, num_workers: int, pin_memory: bool
) -> torch.utils.data.DataLoader:
    """Items are whole micro-batches; a private generator keeps the global torch RNG untouched."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        generator=torch.Generator(),
        multiprocessing_context="fork" if num_workers else None,
        worker_init_fn=_ignore_signals if num_workers else None,
    )
