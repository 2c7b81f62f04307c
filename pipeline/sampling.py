"""The order of samples, as pure functions of (seed, epoch) and a position in the stream.

* :func:`sample_at`: the stream of samples is the concatenation of per-epoch permutations drawn
  from (seed, epoch); stream position ``p`` is sample ``perm(seed, p // N)[p % N]`` of epoch
  ``p // N``. The position is ``consumed_samples``.
* :class:`BatchLayout`: a global batch is positions ``[c, c + B)``; rank ``r`` of ``W`` takes, for
  micro-step ``k`` of ``G``, positions ``c + (k * W + r) * b ... + b``. The set of samples (and
  their masks) in a global batch never depends on how it is split, so a resume at another world
  size sees the same batches.
* :func:`eval_indices`: the validation samples of one rank.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


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


def eval_indices(num_valid: int, num_samples: int, rank: int, world_size: int) -> list[int]:
    """The validation samples of rank ``r``: the first ``num_samples``, every W-th one, so summed
    metrics do not depend on the world size."""
    return list(range(min(num_samples, num_valid)))[rank::world_size]
