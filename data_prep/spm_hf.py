"""A SentencePiece ``.model`` as a Hugging Face fast tokenizer that encodes exactly like it.

Data made with a SentencePiece model (``build_shards --tokenizer spm.model``) yields models whose
export must carry a tokenizer ``AutoTokenizer`` loads. :func:`sentencepiece_to_hf` builds one with
the ``tokenizers`` library from the model's own proto, following SentencePiece step by step:

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
from pathlib import Path
from typing import Any

from data_prep.errors import UserError

# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType
_NORMAL, _USER_DEFINED = 1, 4
_UNIGRAM, _BPE = 1, 2


def _proto(path: Path) -> Any:
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception:
        raise UserError(f"{path}: not a readable SentencePiece model") from None
    return proto


def _model(proto: Any, path: Path) -> Any:
    from tokenizers import models

    spec = proto.trainer_spec
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if spec.model_type == _UNIGRAM:
        return models.Unigram(pieces, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    if spec.model_type == _BPE:
        # SentencePiece BPE merges by piece score: rank every split of a piece into two pieces
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
        ranked = sorted(
            (-score, i, piece[:k], piece[k:])
            for piece, (score, i) in normal.items()
            for k in range(1, len(piece))
            if piece[:k] in normal and piece[k:] in normal
        )
        return models.BPE(
            vocab,
            [(a, b) for _, _, a, b in ranked],
            unk_token=spec.unk_piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    raise UserError(
        f"{path}: SentencePiece model type {spec.model_type} (word or char); only unigram and BPE "
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
    proto = _proto(path)
    norm = proto.normalizer_spec
    tok = Tokenizer(_model(proto, path))
    steps: list[Any] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r" +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    splits: list[Any] = []
    if norm.add_dummy_prefix:  # "first": after a special token no new prefix, as in SentencePiece
        splits.append(pre.Metaspace(replacement="▁", prepend_scheme="first", split=False))
    user = [p.piece for p in proto.pieces if p.type == _USER_DEFINED]
    if user:
        pattern = "|".join(re.escape(u) for u in sorted(user, key=len, reverse=True))
        splits.append(pre.Split(Regex(pattern), behavior="isolated"))
    if splits:
        tok.pre_tokenizer = pre.Sequence(splits)
    parts: list[Any] = [decoders.Replace("▁", " ")]
    if proto.trainer_spec.byte_fallback:
        parts.append(decoders.ByteFallback())
    parts.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        parts.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(parts)
    cls, sep = special["cls_token"], special["sep_token"]
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
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
