"""The trainer's side of the data: masked, padded micro-batches and the data loader.

* :class:`MicroBatches` is a map-style dataset of this rank's micro-batches from a start step, in
  the order of :mod:`pipeline.data.sampling`, built in DataLoader workers (tokens, masking, padding,
  and the teacher cache's targets when there is one), pinned when a GPU is used.
* :class:`EvalBatches`: the validation micro-batches of one rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from data_prep.errors import UserError
from pipeline.data.masking import IGNORE_INDEX, Masker
from pipeline.data.sampling import BatchLayout, BlendOrder, UniformOrder, eval_indices
from pipeline.data.shards import ShardedDataset


class CachedTargets(Protocol):
    """What the loader reads the teacher cache through (:class:`pipeline.cache_teacher.reader.
    TeacherCache`): the targets of a collated micro-batch, in its worker."""

    num_views: int

    def batch_targets(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


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
        cache: CachedTargets | None = None,
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
    """Validation micro-batches of one rank (:func:`pipeline.data.sampling.eval_indices`), view 0."""

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


class Loader:
    """A DataLoader whose workers' :class:`UserError` comes out as the one line it was (torch
    wraps a worker's exception in a message holding the worker's traceback)."""

    def __init__(self, inner: torch.utils.data.DataLoader) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        it = iter(self.inner)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except UserError as exc:
                raise UserError(worker_message(str(exc))) from None
            yield batch


def worker_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split("UserError: ", 1)[-1]


def loader(dataset: torch.utils.data.Dataset, num_workers: int, pin_memory: bool) -> Loader:
    """Items are whole micro-batches; a private generator keeps the global torch RNG untouched."""
    return Loader(
        torch.utils.data.DataLoader(
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
    )
