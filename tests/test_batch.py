"""Rows the losses score, and a batch moved to its device with the teacher cache's rows checked."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.batch import nonpad_rows, scored_rows, take_rows, to_device


def _cpu_batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    attn = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1] = 11, 13
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def test_rows() -> None:
    b = _cpu_batch()
    assert scored_rows(b["labels"], b["attention_mask"], "masked").tolist() == [2, 6]
    assert scored_rows(b["labels"], b["attention_mask"], "all").tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert nonpad_rows(b["attention_mask"]).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert nonpad_rows(torch.ones(2, 3)) is None  # nothing padded: every row
    h = torch.arange(30.0).reshape(2, 5, 3)
    assert take_rows(h, torch.tensor([6])).tolist() == [[18.0, 19.0, 20.0]]
    assert take_rows(h, None).shape == (10, 3)


def test_to_device_keeps_the_mask_only_when_padded_and_checks_cached_rows() -> None:
    b = _cpu_batch()
    d = to_device(b, torch.device("cpu"), "masked")
    assert d.attention_mask is not None and d.tokens == 8 and d.rows.tolist() == [2, 6]
    full = {k: v[:1, :] for k, v in b.items()}
    assert to_device(full, torch.device("cpu"), "masked").attention_mask is None
    b["teacher_ids"], b["teacher_logp"] = torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4)
    assert to_device(b, torch.device("cpu"), "masked").cached_ids is not None
    with pytest.raises(ValueError, match="not the scored rows"):
        to_device(b, torch.device("cpu"), "all")
