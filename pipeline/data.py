"""The trainer's side of the data: shard reader, micro-batches, the data loader.

* :class:`ShardedDataset` memory-maps every shard of a split listed in ``manifest.json`` and
  returns sequences by global index (zero-copy views).
* :class:`MicroBatches` is a map-style dataset of this rank's micro-batches from a start step, in
  the order of :mod:`pipeline.sampling`, built in DataLoader workers (tokens, masking, padding,
  and the teacher cache's targets when there is one), pinned when a GPU is used.
* :class:`EvalBatches`: the validation micro-batches of one rank.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from data_prep.errors import UserError
from data_prep.indexed import IndexedReader
from data_prep.manifest import load_manifest, shard_prefix
from pipeline.masking import IGNORE_INDEX, Masker
from pipeline.sampling import BatchLayout, BlendOrder, UniformOrder, eval_indices

if TYPE_CHECKING:
    from pipeline.cache_teacher.reader import TeacherCache


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
            prefix = shard_prefix(self.data_dir, shard)
            reader = IndexedReader(prefix)
            if len(reader) != shard["num_sequences"] or reader.num_tokens != shard["num_tokens"]:
                raise UserError(
                    f"{prefix}.idx: {len(reader)} sequences / {reader.num_tokens} tokens, the "
                    f"manifest says {shard['num_sequences']} / {shard['num_tokens']}; run "
                    f"python -m data_prep.verify {prefix.parent.parent}"
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
        cache: TeacherCache | None = None,
        order: BlendOrder | UniformOrder | None = None,
    ) -> None:
        self.dataset = dataset
        self.layout = layout
        self.masker = masker
        self.seed = seed
        self.start_consumed = start_consumed
        self.num_steps = num_steps
        self.pad_id = pad_id
        # With a cache of V views, epoch e masks with view e mod V; its targets are read here,
        # in the worker, off the training step.
        self.cache = cache
        self.num_views = cache.num_views if cache is not None else 0
        self.order = order or UniformOrder(seed, len(dataset))  # a blend's, or one source's

    def __len__(self) -> int:
        return self.num_steps * self.layout.grad_accum

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step, micro = divmod(i, self.layout.grad_accum)
        consumed = self.start_consumed + step * self.layout.global_batch
        positions = np.asarray(self.layout.positions(consumed, micro), dtype=np.int64)
        epochs, order = self.order(positions)
        indices = order.tolist()
        seqs = [self.dataset[index] for index in indices]
        views = (epochs % self.num_views if self.num_views else epochs).tolist()
        batch = collate(seqs, indices, views, self.masker, self.seed, self.pad_id)
        if self.cache is not None:
            batch["teacher_ids"], batch["teacher_logp"] = self.cache.batch_targets(batch)
        return batch


class EvalBatches(torch.utils.data.Dataset):
    """Validation micro-batches of one rank (:func:`pipeline.sampling.eval_indices`), view 0."""

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
        self.indices = eval_indices(len(dataset), num_samples, rank, world_size)
        self.micro_batch = micro_batch

    def __len__(self) -> int:
        return (len(self.indices) + self.micro_batch - 1) // self.micro_batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        idx = self.indices[i * self.micro_batch : (i + 1) * self.micro_batch]
        seqs = [self.dataset[j] for j in idx]
        return collate(seqs, idx, [0] * len(idx), self.masker, self.seed, self.pad_id)


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
