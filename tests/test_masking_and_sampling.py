"""Masking is a pure function of (seed, view, index); sample order of (seed, epoch); batches
split across ranks cover the same samples with the same masks whatever the world size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.manifest import load_manifest
from pipeline.data import (
    BatchLayout,
    MicroBatches,
    ShardedDataset,
    make_masker,
    masking_spec,
    sample_at,
)
from pipeline.masking import IGNORE_INDEX, Masker, MaskingSpec

SPEC = MaskingSpec(vocab_size=1000, mask_id=4, special_ids=(0, 2, 3, 4))


def test_masking_is_deterministic_and_depends_on_every_key() -> None:
    masker = Masker(SPEC)
    tokens = np.r_[2, np.arange(10, 510), 3]
    a = masker(tokens, 1, 0, 7)
    assert all(np.array_equal(x, y) for x, y in zip(a, masker(tokens, 1, 0, 7)))
    assert all(np.array_equal(x, y) for x, y in zip(a, Masker(SPEC)(tokens.copy(), 1, 0, 7)))
    for other in ((2, 0, 7), (1, 1, 7), (1, 0, 8)):
        assert not np.array_equal(a[1], masker(tokens, *other)[1])


def test_masking_rates_and_specials() -> None:
    masker = Masker(SPEC)
    tokens = np.r_[2, np.arange(10, 1000), 3, 0, 0]
    chosen = masked = randomised = kept = 0
    for index in range(200):
        ids, labels = masker(tokens, 0, 0, index)
        sel = labels != IGNORE_INDEX
        assert not sel[[0, len(tokens) - 3, len(tokens) - 2, len(tokens) - 1]].any()  # specials
        assert np.array_equal(labels[sel], tokens[sel])
        assert np.array_equal(ids[~sel], tokens[~sel])
        assert sel.sum() == round(0.15 * 990)
        chosen += sel.sum()
        masked += (ids[sel] == 4).sum()
        kept += (ids[sel] == tokens[sel]).sum()
        randomised += ((ids[sel] != 4) & (ids[sel] != tokens[sel])).sum()
        assert not np.isin(ids[sel & (ids != 4)], [0, 2, 3]).any()  # random tokens are not special
    assert masked / chosen == pytest.approx(0.8, abs=0.02)
    assert randomised / chosen == pytest.approx(0.1, abs=0.015)
    assert kept / chosen == pytest.approx(0.1, abs=0.015)


def test_frequency_smoothing_prefers_rare_tokens() -> None:
    counts = np.ones(1000, dtype=np.int64)
    counts[10:20] = 1_000_000  # very frequent tokens
    spec = MaskingSpec(vocab_size=1000, mask_id=4, special_ids=(0, 2, 3, 4), smoothing=0.7)
    tokens = np.r_[2, np.tile(np.arange(10, 30), 10), 3]  # half frequent, half rare
    plain, smooth = Masker(SPEC), Masker(spec, counts)
    frac_plain = np.mean(
        [
            np.isin(tokens[plain(tokens, 0, 0, i)[1] != IGNORE_INDEX], np.arange(10, 20)).mean()
            for i in range(100)
        ]
    )
    frac_smooth = np.mean(
        [
            np.isin(tokens[smooth(tokens, 0, 0, i)[1] != IGNORE_INDEX], np.arange(10, 20)).mean()
            for i in range(100)
        ]
    )
    assert frac_plain == pytest.approx(0.5, abs=0.05)
    assert frac_smooth < 0.05


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
    masker = make_masker(manifest, masking_spec(manifest, 0.15, 0.8, 0.1, 0.0))
    one = _global_batches(dataset, 1, 8, 8, 3, masker)
    two = _global_batches(dataset, 2, 2, 8, 3, masker)
    assert one == two
    assert all(len(step) == 8 for step in one)
    seen = [i for step in one for i in step]
    assert len(seen) == len(set(seen))  # no sample twice within the first epoch


def test_sharded_dataset_reads_every_shard(small_data_dir: Path) -> None:
    from data_prep.indexed import IndexedReader

    manifest = load_manifest(small_data_dir)
    dataset = ShardedDataset(small_data_dir, "train", manifest)
    direct = [
        r[i]
        for s in manifest["splits"]["train"]["shards"]
        for r in [IndexedReader(small_data_dir / s["path"])]
        for i in range(len(r))
    ]
    assert len(dataset) == len(direct) == manifest["splits"]["train"]["num_sequences"]
    assert all(np.array_equal(dataset[i], direct[i]) for i in range(len(direct)))
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    batch = MicroBatches(
        dataset,
        BatchLayout(4, 4, 1, 1, 0),
        make_masker(manifest, masking_spec(manifest, 0.15, 0.8, 0.1, 0.0)),
        1,
        0,
        1,
        0,
    )[0]
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape[0] == 4
