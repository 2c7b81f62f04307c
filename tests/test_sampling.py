"""The sample order is a pure function of (seed, epoch); batches split across ranks cover the same
samples with the same masks whatever the world size."""

from __future__ import annotations

from pathlib import Path

from data_prep.manifest import load_manifest
from pipeline.config import MaskingConfig
from pipeline.data import MicroBatches, ShardedDataset
from pipeline.masking import Masker, make_masker
from pipeline.sampling import BatchLayout, eval_indices, sample_at


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


def test_eval_indices_split_the_same_samples_over_any_world_size() -> None:
    one = eval_indices(100, 30, 0, 1)
    two = eval_indices(100, 30, 0, 2) + eval_indices(100, 30, 1, 2)
    assert one == list(range(30)) and sorted(two) == one
    assert eval_indices(10, 30, 0, 1) == list(range(10))  # fewer valid sequences than asked
