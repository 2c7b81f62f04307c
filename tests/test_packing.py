"""Tests of data_prep.packing.Packer: `full` and `doc` modes, edge cases at the capacity."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.packing import Packer

CLS, SEP = 101, 102
SEQ_LEN = 10
CAP = SEQ_LEN - 2


def doc(n: int, start: int = 1000) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.uint16)


def pack(docs: list[np.ndarray], mode: str, seq_len: int = SEQ_LEN) -> list[list[int]]:
    packer = Packer(seq_len, CLS, SEP, mode, np.uint16)
    out = [seq for d in docs for seq in packer.add(d)]
    out += list(packer.flush())
    assert all(s.dtype == np.uint16 for s in out)
    return [s.tolist() for s in out]


def test_full_doc_of_exactly_capacity_fills_one_sequence_and_the_next_starts_fresh() -> None:
    a, b = doc(CAP, 1000), doc(3, 2000)
    assert pack([a, b], "full") == [[CLS, *a.tolist(), SEP], [CLS, *b.tolist(), SEP]]


def test_full_doc_of_capacity_minus_one_gets_no_trailing_separator() -> None:
    a, b = doc(CAP - 1, 1000), doc(3, 2000)
    # a separator would be the last token: the sequence is emitted one short instead
    assert pack([a, b], "full") == [[CLS, *a.tolist(), SEP], [CLS, *b.tolist(), SEP]]


def test_full_doc_of_capacity_minus_two_takes_a_separator_and_one_token() -> None:
    a, b = doc(CAP - 2, 1000), doc(3, 2000)
    assert pack([a, b], "full") == [
        [CLS, *a.tolist(), SEP, 2000, SEP],
        [CLS, 2001, 2002, SEP],
    ]


def test_full_long_document_spans_sequences_and_short_ones_share() -> None:
    a, b, c = doc(2 * CAP + 3, 1000), doc(2, 2000), doc(1, 3000)
    seqs = pack([a, b, c], "full")
    assert seqs[0] == [CLS, *a[:CAP].tolist(), SEP]
    assert seqs[1] == [CLS, *a[CAP : 2 * CAP].tolist(), SEP]
    assert seqs[2] == [CLS, *a[2 * CAP :].tolist(), SEP, 2000, 2001, SEP, 3000, SEP]
    assert len(seqs) == 3


def test_empty_documents_add_nothing_not_even_a_separator() -> None:
    a, b = doc(2, 1000), doc(2, 2000)
    empty = doc(0)
    assert pack([empty, a, empty, empty, b, empty], "full") == [
        [CLS, 1000, 1001, SEP, 2000, 2001, SEP]
    ]
    assert pack([empty, a, empty, b], "doc") == [[CLS, 1000, 1001, SEP], [CLS, 2000, 2001, SEP]]
    assert pack([empty], "full") == [] and pack([empty], "doc") == []


def test_doc_mode_never_crosses_documents() -> None:
    a, b = doc(CAP + 1, 1000), doc(CAP, 2000)
    assert pack([a, b], "doc") == [
        [CLS, *a[:CAP].tolist(), SEP],
        [CLS, int(a[CAP]), SEP],
        [CLS, *b.tolist(), SEP],
    ]


def test_doc_mode_flush_yields_nothing() -> None:
    packer = Packer(SEQ_LEN, CLS, SEP, "doc", np.uint16)
    assert len(list(packer.add(doc(3)))) == 1
    assert list(packer.flush()) == []


def test_flush_emits_the_partial_sequence_once() -> None:
    packer = Packer(SEQ_LEN, CLS, SEP, "full", np.uint16)
    assert list(packer.add(doc(3))) == []
    assert [s.tolist() for s in packer.flush()] == [[CLS, 1000, 1001, 1002, SEP]]
    assert list(packer.flush()) == []


def test_smallest_sequence_length() -> None:
    assert pack([doc(2), doc(1, 2000)], "full", seq_len=3) == [
        [CLS, 1000, SEP],
        [CLS, 1001, SEP],
        [CLS, 2000, SEP],
    ]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["full", "doc"])
def test_random_documents_round_trip(prep: type, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    seq_len = int(rng.integers(3, 40))
    docs = [
        rng.integers(0, 100, size=int(rng.integers(0, 3 * seq_len))).astype(np.uint16)
        for _ in range(200)
    ]
    seqs = pack(docs, mode, seq_len)
    check = prep.check_full if mode == "full" else prep.check_doc
    check(seqs, [d.tolist() for d in docs], CLS, SEP, seq_len)


def test_the_checker_catches_a_lost_token(prep: type) -> None:
    docs = [doc(5), doc(7, 2000)]
    seqs = pack(docs, "full")
    del seqs[1][3]
    with pytest.raises(AssertionError):
        prep.check_full(seqs, [d.tolist() for d in docs], CLS, SEP, SEQ_LEN)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="seq_len"):
        Packer(2, CLS, SEP, "full", np.uint16)
    with pytest.raises(ValueError, match="pack mode"):
        Packer(SEQ_LEN, CLS, SEP, "sentences", np.uint16)
