"""data_prep.spm_hf: a SentencePiece model converted to a Hugging Face fast tokenizer gives the
SentencePiece ids, framed by [CLS]/[SEP], on text it was not trained on (unigram and BPE)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from conftest import AUSTEN

from data_prep.spm_hf import sentencepiece_to_hf
from data_prep.tokenizer import PROBE_TEXT

SPECIAL = {
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "<pad>",
    "mask_token": "[MASK]",
    "unk_token": "<unk>",
}
EDGES = [
    PROBE_TEXT,
    PROBE_TEXT.lower(),
    "hello [MASK] world",
    "a[MASK]b",
    "x [SEP] y",
    "  leading and   inner  and trailing spaces  ",
    "\nVOLUME I\ttab",
    "",
]


def _paragraphs(name: str, count: int) -> list[str]:
    text = gzip.decompress((AUSTEN / f"{name}.txt.gz").read_bytes()).decode()
    return [p for p in text.split("\n\n")[:count] if p.strip()]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_converted_tokenizer_gives_the_sentencepiece_ids(model_type: str, tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    lines = (line for p in _paragraphs("persuasion", 2000) for line in p.splitlines())
    spm.SentencePieceTrainer.Train(
        sentence_iterator=lines, model_prefix=str(tmp_path / "m"), vocab_size=1000,
        model_type=model_type, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2,
    )  # fmt: skip
    sentencepiece_to_hf(
        tmp_path / "m.model", SPECIAL, ["input_ids", "attention_mask"]
    ).save_pretrained(str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))  # as a user loads it
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    cls, sep = sp.PieceToId("[CLS]"), sp.PieceToId("[SEP]")
    texts = EDGES + _paragraphs("emma", 1500)
    wrong = [t for t in texts if tok(t)["input_ids"] != [cls, *sp.EncodeAsIds(t), sep]]
    assert not wrong, wrong[:3]
    assert tok.convert_tokens_to_ids("[MASK]") == tok.mask_token_id == sp.PieceToId("[MASK]")
    assert set(tok("one")) == {"input_ids", "attention_mask"}
    ids = tok("She was glad to see him.")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == sp.DecodeIds(ids[1:-1])


def test_a_file_that_is_no_sentencepiece_model_is_one_clear_error(tmp_path: Path) -> None:
    from data_prep.errors import UserError

    bad = tmp_path / "x.model"
    for content in (b"\xff\xff\xff", b"", b"\x0a\x05ab"):  # bad varint, empty, cut short
        bad.write_bytes(content)
        with pytest.raises(UserError, match="not a readable SentencePiece model"):
            sentencepiece_to_hf(bad, SPECIAL, ["input_ids"])
