"""The trainer's data: every shard of a split by global index, micro-batches as the trainer gets them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.manifest import load_manifest
from pipeline.config.schema import MaskingConfig
from pipeline.data.loader import MicroBatches
from pipeline.data.masking import make_masker
from pipeline.data.sampling import BatchLayout
from pipeline.data.shards import ShardedDataset


def test_sharded_dataset_reads_every_shard(small_data_dir: Path) -> None:
    from data_prep.indexed import IndexedReader

    manifest = load_manifest(small_data_dir)
    dataset = ShardedDataset(small_data_dir, "train", manifest)
    direct = [
        r[i]
        for s in manifest.train.shards
        for r in [IndexedReader(small_data_dir / s.path)]
        for i in range(len(r))
    ]
    assert len(dataset) == len(direct) == manifest.train.num_sequences
    assert all(np.array_equal(dataset[i], direct[i]) for i in range(len(direct)))
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    batch = MicroBatches(
        dataset,
        BatchLayout(4, 4, 1, 1, 0),
        make_masker(manifest, MaskingConfig(smoothing=0.0)),
        1,
        0,
        1,
        0,
    )[0]
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape[0] == 4


def test_validation_draws_from_every_shard(small_data_dir: Path) -> None:
    from pipeline.data.loader import EvalBatches

    manifest = load_manifest(small_data_dir)
    shards = manifest.valid.shards
    assert len(shards) >= 2  # one per source file that has valid documents
    valid = ShardedDataset(small_data_dir, "valid", manifest)
    data = EvalBatches(valid, make_masker(manifest, MaskingConfig()), 56, 4, 0, 1, 12, 0)
    starts = np.cumsum([0] + [s.num_sequences for s in shards])
    touched = {int(np.searchsorted(starts, i, side="right")) - 1 for i in data.indices}
    assert touched == set(range(len(shards)))
