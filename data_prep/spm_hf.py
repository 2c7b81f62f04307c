"""A SentencePiece ``.model`` as a Hugging Face fast tokenizer that encodes exactly like it.

Data made with a SentencePiece model (``build_shards --tokenizer spm.model``) yields models whose
export must carry a tokenizer ``AutoTokenizer`` loads. :func:`sentencepiece_to_hf` builds one with
the ``tokenizers`` library from the model file's own settings, following SentencePiece step by step:

* normalizer: the model's precompiled character map (``nmt_nfkc`` and the like), then its
  whitespace rules (trailing spaces dropped, runs of spaces collapsed, spaces escaped as ``▁``);
  leading spaces collapse into the ``▁`` that starts the first piece, as SentencePiece's do;
* the dummy prefix ``▁`` before the first piece; user-defined pieces (``[CLS]``, ``[SEP]``,
  ``[MASK]``) kept whole; the unigram (or BPE) vocabulary with the model's scores;
* ``[CLS] text [SEP]`` (and ``[CLS] a [SEP] b [SEP]`` for pairs) around each encoding, as the
  packer frames training sequences.

The special tokens are matched in the *normalized* text, as SentencePiece matches its
user-defined pieces, so the spaces around them come out as SentencePiece's do. One difference
remains: a text that begins with a special token gets no dummy-prefix piece before it.
Ids agree with ``SentencePieceProcessor.EncodeAsIds`` on ordinary text (tests check the corpus).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.errors import UserError

# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType
_NORMAL, _USER_DEFINED = 1, 4
_UNIGRAM, _BPE = 1, 2


@dataclass
class SpmModel:
    """The fields of a SentencePiece ModelProto the conversion needs, with the proto's defaults."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # piece, score, type
    model_type: int = _UNIGRAM
    unk_id: int = 0
    unk_piece: str = "<unk>"
    byte_fallback: bool = False
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire in (1, 5):  # fixed 64 / 32 bits
            size = 8 if wire == 1 else 4
            value, i = buf[i : i + size], i + size
        elif wire == 2:  # length-delimited: strings, bytes, messages
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated protobuf message")
        yield number, value


def read_model(path: Path) -> SpmModel:
    """The SentencePiece model at ``path``, read from its protobuf bytes.

    A reader of the dozen fields needed, rather than sentencepiece's generated ``_pb2`` module:
    that one needs a protobuf runtime at least as new as the one it was generated with, which
    nothing installs beside sentencepiece.
    """
    m = SpmModel()
    try:
        for number, value in _fields(path.read_bytes()):
            if number == 1:  # SentencePiece pieces
                piece, score, kind = "", 0.0, _NORMAL
                for n, v in _fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        kind = v
                m.pieces.append((piece, score, kind))
            elif number == 2:  # TrainerSpec
                for n, v in _fields(value):
                    if n == 3:
                        m.model_type = v
                    elif n == 35:
                        m.byte_fallback = bool(v)
                    elif n == 40:
                        m.unk_id = v
                    elif n == 45:
                        m.unk_piece = v.decode("utf-8")
            elif number == 3:  # NormalizerSpec
                for n, v in _fields(value):
                    if n == 2:
                        m.precompiled_charsmap = bytes(v)
                    elif n == 3:
                        m.add_dummy_prefix = bool(v)
                    elif n == 4:
                        m.remove_extra_whitespaces = bool(v)
                    elif n == 5:
                        m.escape_whitespaces = bool(v)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error):
        raise UserError(f"{path}: not a readable SentencePiece model") from None
    if not m.pieces:
        raise UserError(f"{path}: not a readable SentencePiece model (no pieces)")
    return m


def _model(m: SpmModel, path: Path) -> Any:
    from tokenizers import models

    pieces = [(piece, score) for piece, score, _ in m.pieces]
    if m.model_type == _UNIGRAM:
        return models.Unigram(pieces, unk_id=m.unk_id, byte_fallback=m.byte_fallback)
    if m.model_type == _BPE:
        # SentencePiece BPE merges by piece score: rank every split of a piece into two pieces
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        normal = {p: (score, i) for i, (p, score, kind) in enumerate(m.pieces) if kind == _NORMAL}
        ranked = sorted(
            (-score, i, piece[:k], piece[k:])
            for piece, (score, i) in normal.items()
            for k in range(1, len(piece))
            if piece[:k] in normal and piece[k:] in normal
        )
        return models.BPE(
            vocab,
            [(a, b) for _, _, a, b in ranked],
            unk_token=m.unk_piece,
            fuse_unk=True,
            byte_fallback=m.byte_fallback,
        )
    raise UserError(
        f"{path}: SentencePiece model type {m.model_type} (word or char); only unigram and BPE "
        "models convert to a Hugging Face tokenizer"
    )


def sentencepiece_to_hf(
    path: str | Path, special: dict[str, str], model_input_names: list[str]
) -> Any:
    """A ``PreTrainedTokenizerFast`` equivalent to the SentencePiece model at ``path``.

    ``special``: the pieces of ``cls_token``, ``sep_token``, ``pad_token``, ``mask_token`` and
    ``unk_token`` (as :class:`data_prep.tokenizer.TextTokenizer` found them).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
    from tokenizers import pre_tokenizers as pre
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    m = read_model(path)
    tok = Tokenizer(_model(m, path))
    steps: list[Any] = []
    if m.precompiled_charsmap:
        steps.append(normalizers.Precompiled(m.precompiled_charsmap))
    if m.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r" +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if m.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    splits: list[Any] = []
    if m.add_dummy_prefix:  # "first": after a special token no new prefix, as in SentencePiece
        splits.append(pre.Metaspace(replacement="▁", prepend_scheme="first", split=False))
    user = [piece for piece, _, kind in m.pieces if kind == _USER_DEFINED]
    if user:
        pattern = "|".join(re.escape(u) for u in sorted(user, key=len, reverse=True))
        splits.append(pre.Split(Regex(pattern), behavior="isolated"))
    if splits:
        tok.pre_tokenizer = pre.Sequence(splits)
    parts: list[Any] = [decoders.Replace("▁", " ")]
    if m.byte_fallback:
        parts.append(decoders.ByteFallback())
    parts.append(decoders.Fuse())
    if m.add_dummy_prefix:
        parts.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(parts)
    cls, sep = special["cls_token"], special["sep_token"]
    ids = {piece: i for i, (piece, _, _) in enumerate(m.pieces)}
    if cls not in ids or sep not in ids:
        raise UserError(f"{path}: the SentencePiece model has no {cls} or {sep} piece")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
    )
    # normalized=True: matched after normalization, where SentencePiece matches its own pieces
    tokens = {k: AddedToken(v, special=True, normalized=True) for k, v in special.items()}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=model_input_names, **tokens
    )
