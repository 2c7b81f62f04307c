"""The sample order is a pure function of (seed, epoch); batches split across ranks cover the same
samples with the same masks whatever the world size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep.manifest import load_manifest
from pipeline.config.schema import MaskingConfig
from pipeline.data.loader import MicroBatches
from pipeline.data.masking import Masker, make_masker
from pipeline.data.sampling import BatchLayout, eval_indices, sample_at, samples_at
from pipeline.data.shards import ShardedDataset


def test_sample_order_is_a_permutation_per_epoch() -> None:
    n = 37
    epoch0 = [sample_at(p, 5, n) for p in range(n)]
    epoch1 = [sample_at(p, 5, n) for p in range(n, 2 * n)]
    assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
    assert sorted(i for _, i in epoch0) == list(range(n)) == sorted(i for _, i in epoch1)
    assert [i for _, i in epoch0] != [i for _, i in epoch1]
    assert [sample_at(p, 6, n)[1] for p in range(n)] != [i for _, i in epoch0]


def _global_batches(
    dataset: ShardedDataset, world: int, micro: int, global_batch: int, steps: int, masker: Masker
) -> list[dict[int, tuple[list[int], list[int]]]]:
    """Per step: sample index -> (input ids, labels) over all ranks."""
    accum = global_batch // (micro * world)
    out: list[dict[int, tuple[list[int], list[int]]]] = [{} for _ in range(steps)]
    for rank in range(world):
        layout = BatchLayout(global_batch, micro, accum, world, rank)
        mb = MicroBatches(dataset, layout, masker, 11, 0, steps, 0)
        for i in range(len(mb)):
            batch = mb[i]
            step = i // accum
            for row, index in enumerate(batch["sample_index"].tolist()):
                n = int(batch["attention_mask"][row].sum())
                out[step][index] = (
                    batch["input_ids"][row, :n].tolist(),
                    batch["labels"][row, :n].tolist(),
                )
    return out


def test_same_batches_and_masks_on_one_and_two_ranks(small_data_dir: Path) -> None:
    manifest = load_manifest(small_data_dir)
    dataset = ShardedDataset(small_data_dir, "train", manifest)
    masker = make_masker(manifest, MaskingConfig(smoothing=0.0))
    one = _global_batches(dataset, 1, 8, 8, 3, masker)
    two = _global_batches(dataset, 2, 2, 8, 3, masker)
    assert one == two
    assert all(len(step) == 8 for step in one)
    seen = [i for step in one for i in step]
    assert len(seen) == len(set(seen))  # no sample twice within the first epoch


def test_eval_indices_spread_over_the_split_and_any_world_size() -> None:
    assert eval_indices(1000, 10, 0, 1) == list(range(0, 1000, 100))
    two = eval_indices(1000, 10, 0, 2) + eval_indices(1000, 10, 1, 2)
    assert sorted(two) == eval_indices(1000, 10, 0, 1)
    assert eval_indices(10, 30, 0, 1) == list(range(10))  # fewer valid sequences than asked


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 4097, 65537])
def test_each_epoch_is_a_permutation(n: int) -> None:
    epochs, order = samples_at(np.arange(3 * n), 56, n)
    for e in range(3):
        assert sorted(order[epochs == e].tolist()) == list(range(n))
    if n > 3:
        assert order[:n].tolist() != order[n : 2 * n].tolist()  # another order each epoch
        assert samples_at(np.arange(n), 57, n)[1].tolist() != order[:n].tolist()  # and seed


def test_the_order_is_the_same_however_the_stream_is_cut() -> None:
    n = 1013
    whole = samples_at(np.arange(2500), 3, n)[1]
    pieces = [samples_at(np.arange(a, b), 3, n)[1] for a, b in ((0, 7), (7, 1500), (1500, 2500))]
    assert np.array_equal(np.concatenate(pieces), whole)
    assert [sample_at(p, 3, n)[1] for p in (0, 1012, 1013, 2499)] == whole[
        [0, 1012, 1013, 2499]
    ].tolist()


def test_the_order_takes_no_memory_per_sample() -> None:
    """BooksCorpus + Wikipedia at seq 128 is 25.8M sequences: a permutation array would be
    206 MB per loader worker (two at an epoch boundary). The order is computed per position."""
    import tracemalloc

    tracemalloc.start()
    found = [sample_at(p, 56, 50_000_000) for p in (0, 49_999_999, 50_000_000)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20, f"{peak / 2**20:.1f} MiB"
    assert [e for e, _ in found] == [0, 0, 1] and max(i for _, i in found) < 50_000_000
