"""Blending corpora: sources parsed and checked against each other, one combined view, the blend's
order (weights kept, each source's own epochs, exact counts), and fingerprints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.errors import UserError
from data_prep.manifest import manifest_fingerprint
from pipeline.config.sources import Source, parse_sources
from pipeline.data.corpus import Corpus
from pipeline.data.sampling import CYCLE, BlendOrder


def test_sources_of_a_blend_are_seen_as_one_corpus(
    small_data_dir: Path, second_data_dir: Path
) -> None:
    single = Corpus((Source(str(small_data_dir)),))
    assert not single.blended and single.fingerprint == manifest_fingerprint(small_data_dir)
    blend = Corpus(parse_sources([f"0.3:{small_data_dir}", f"0.7:{second_data_dir}"]))
    m, a, b = blend.manifest, *blend.manifests
    assert m.train.num_sequences == a.train.num_sequences + b.train.num_sequences
    keys = [s.path for s in m.train.shards]
    assert len(set(keys)) == len(keys) and keys[0].startswith("s0/") and keys[-1].startswith("s1/")
    assert all(Path(f"{s.file}.bin").is_file() for s in m.train.shards)
    assert m.token_counts == (np.array(a.token_counts) + b.token_counts).tolist()
    other = Corpus(parse_sources([f"0.5:{small_data_dir}", f"0.5:{second_data_dir}"]))
    assert other.fingerprint != blend.fingerprint  # the weights make the order
    assert other.content_fingerprint == blend.content_fingerprint  # a cache serves both
    assert blend.describe().startswith("30% ")


def test_sources_that_disagree_are_refused_in_one_line(
    small_data_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(small_data_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["seq_len"] = 128
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"other/manifest.json: seq_len 128 differs"):
        Corpus(parse_sources([f"1:{small_data_dir}", f"1:{other}"]))
    manifest["seq_len"] = 64
    manifest["tokenizer"]["fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="made with another tokenizer"):
        Corpus(parse_sources([f"1:{small_data_dir}", f"1:{other}"]))


def test_the_blend_keeps_its_weights_and_each_sources_epochs() -> None:
    sizes, weights = [50, 400], [0.3, 0.7]
    order = BlendOrder(7, sizes, weights)
    epochs, indices = order(np.arange(2000))
    first = indices < 50
    assert abs(first[:1000].mean() - 0.3) < 0.002  # every stretch, not just the whole
    assert order.consumed(2000) == [int(first.sum()), int((~first).sum())]
    # Source 0 runs through its own epochs: each of its 50 samples once per 50 draws.
    drawn = indices[first][:150]
    assert [sorted(drawn[i : i + 50].tolist()) for i in (0, 50, 100)] == [list(range(50))] * 3
    assert epochs[first][:150].tolist() == [0] * 50 + [1] * 50 + [2] * 50
    assert np.array_equal(order(np.arange(1000, 2000))[1], indices[1000:])  # any cut, same order
    assert order.consumed(3 * CYCLE + 5) == [
        int(c) for c in np.bincount((order(np.arange(3 * CYCLE + 5))[1] >= 50).astype(int))
    ]
