"""The order of samples, as pure functions of (seed, epoch) and a position in the stream.

* :func:`samples_at`: the stream of samples is the concatenation of per-epoch permutations keyed
  by (seed, epoch); stream position ``p`` is sample ``perm(seed, p // N)(p % N)`` of epoch
  ``p // N``. The position is ``consumed_samples``. The permutation (:class:`EpochOrder`) is a
  keyed Feistel network with cycle walking: computed per position in O(1) memory, never an
  array of the split (25.8M sequences of BooksCorpus + Wikipedia at seq 128 would be 206 MB of
  int64 per loader worker).
* :class:`BatchLayout`: a global batch is positions ``[c, c + B)``; rank ``r`` of ``W`` takes, for
  micro-step ``k`` of ``G``, positions ``c + (k * W + r) * b ... + b``. The set of samples (and
  their masks) in a global batch never depends on how it is split, so a resume at another world
  size sees the same batches.
* :func:`eval_indices`: the validation samples of one rank, spread evenly over the whole split
  (every source file contributes, not only the first).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

_ROUNDS = 6


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (multiplications wrap modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class EpochOrder:
    """A pseudo-random bijection of ``[0, n)`` keyed by (seed, epoch), in O(1) memory.

    A balanced Feistel network on the smallest even number of bits that holds ``n - 1`` (a
    domain below 4n), with cycle walking: a value outside ``[0, n)`` goes through the network
    again until it lands inside, which keeps the map a bijection of ``[0, n)``.
    """

    def __init__(self, seed: int, epoch: int, n: int) -> None:
        if n < 1:
            raise ValueError("an epoch of no samples")
        bits = max(2, (n - 1).bit_length())
        self.half = np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        self.n = n
        self.keys = [
            np.uint64(
                int.from_bytes(
                    hashlib.blake2b(f"{seed}:{epoch}:{r}".encode(), digest_size=8).digest(),
                    "little",
                )
            )
            for r in range(_ROUNDS)
        ]

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix(right ^ key) & self.mask)
        return (left << self.half) | right

    def __call__(self, offsets: np.ndarray) -> np.ndarray:
        x = self._rounds(np.asarray(offsets, dtype=np.uint64))
        while (outside := x >= np.uint64(self.n)).any():
            x[outside] = self._rounds(x[outside])
        return x.astype(np.int64)


@functools.lru_cache(maxsize=16)
def _order(seed: int, epoch: int, n: int) -> EpochOrder:
    return EpochOrder(seed, epoch, n)


def samples_at(positions: np.ndarray, seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, sample indices) at stream positions ``positions`` (any order, any epochs)."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_samples)
    indices = np.empty_like(offsets)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        indices[sel] = _order(seed, int(epoch), num_samples)(offsets[sel])
    return epochs, indices


def sample_at(position: int, seed: int, num_samples: int) -> tuple[int, int]:
    """(epoch, sample index) at stream position ``position``."""
    epochs, indices = samples_at(np.array([position]), seed, num_samples)
    return int(epochs[0]), int(indices[0])


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


def eval_indices(num_valid: int, num_samples: int, rank: int, world_size: int) -> list[int]:
    """The validation samples of rank ``r``: ``num_samples`` spread evenly over the split (all of
    it when it is smaller), every W-th one to rank r, so summed metrics do not depend on the
    world size."""
    k = min(num_samples, num_valid)
    return [i * num_valid // k for i in range(k)][rank::world_size]


CYCLE = 1 << 14
"""Positions per cycle of a blend: weights are kept to 1/16384 of the stream."""


class BlendOrder:
    """The sample order of several sources drawn by weight: a pure function of the position.

    Each cycle of :data:`CYCLE` stream positions is assigned to the sources greedily (position i
    goes to the source furthest behind ``weight x (i + 1)``, as Megatron's blended index does);
    the cycle repeats. Source k's j-th draw is its sample ``samples_at(j, seed_k, n_k)``: each
    source runs through its own keyed epochs, whatever the others do. Indices are global:
    ``offsets[k]`` + the sample's index within source k.
    """

    def __init__(self, seed: int, sizes: list[int], weights: list[float]) -> None:
        total = sum(weights)
        w = np.asarray(weights, dtype=np.float64) / total
        counts = np.zeros(len(sizes), dtype=np.int64)
        source = np.empty(CYCLE, dtype=np.int64)
        rank = np.empty(CYCLE, dtype=np.int64)
        for i in range(CYCLE):
            k = int(np.argmax(w * (i + 1) - counts))
            source[i], rank[i] = k, counts[k]
            counts[k] += 1
        self.seed, self.sizes = seed, list(sizes)
        self.source, self.rank, self.per_cycle = source, rank, counts
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1]

    def _draws(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, how many draws of that source come before) at each position."""
        cycles, within = np.divmod(np.asarray(positions, dtype=np.int64), CYCLE)
        source = self.source[within]
        return source, cycles * self.per_cycle[source] + self.rank[within]

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(each sample's epoch within its own source, global sample index) at ``positions``."""
        source, draws = self._draws(positions)
        epochs = np.empty_like(draws)
        indices = np.empty_like(draws)
        for k in np.unique(source):
            sel = source == k
            e, i = samples_at(draws[sel], self.seed * 1_000_003 + int(k), self.sizes[k])
            epochs[sel], indices[sel] = e, i + self.offsets[k]
        return epochs, indices

    def consumed(self, position: int) -> list[int]:
        """Samples drawn from each source in stream positions ``[0, position)``."""
        cycles, within = divmod(position, CYCLE)
        head = np.bincount(self.source[:within], minlength=len(self.sizes))
        return [int(c) for c in cycles * self.per_cycle + head]


class UniformOrder:
    """The order of one source: :func:`samples_at` (the same interface as :class:`BlendOrder`)."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed, self.size = seed, size

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return samples_at(positions, self.seed, self.size)

    def consumed(self, position: int) -> list[int]:
        return [position]
