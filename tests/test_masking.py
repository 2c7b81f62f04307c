"""Masking is a pure function of (seed, view, index): rates, specials, frequency smoothing."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.masking import IGNORE_INDEX, Masker, MaskingSpec

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
