"""The teacher's tokenizer, loaded from a Hugging Face folder or a SentencePiece ``.model``.

``TextTokenizer`` encodes batches of documents to ids without special tokens (the packer adds
``[CLS]``/``[SEP]``) and reports the ids the rest of the pipeline needs (cls, sep, pad, mask,
unk). Its ``fingerprint`` identifies the tokenizer by what it does: the vocabulary in id order,
the special ids and the encodings of a fixed probe text. Two folders that tokenize identically
(a ``vocab.txt`` and the ``tokenizer.json`` made from it, say) share a fingerprint; the sha256
of each file is recorded beside it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.errors import UserError
from data_prep.hub import resolve

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
PROBE_TEXT = (
    "The Quick brown fox, naïve café: 3.14 -- don't stop! 東京 “quotes” Ünïcödé\tand\nnewlines "
    "unbelievably antidisestablishmentarianism [MASK] <mask> https://example.com/a_b?c=d"
)


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    pad: int
    mask: int
    unk: int


@dataclass(frozen=True)
class TokenizerInfo:
    kind: str  # "hf" | "sentencepiece"
    path: str
    vocab_size: int
    special_ids: SpecialIds
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)
    source: str = ""  # as the user named it: a path, or a hub ID resolved to ``path``

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TextTokenizer:
    """A tokenizer for batch encoding; construct it in each worker process from its path.

    ``path``: a Hugging Face folder, a SentencePiece ``.model``, or a hub ID (resolved through the
    hub cache, see :mod:`data_prep.hub`; the fingerprint is of the resolved files). ``source``:
    the name the user gave, when ``path`` is already its resolved folder (default: ``path``).
    """

    def __init__(self, path: str | os.PathLike[str], source: str | None = None) -> None:
        self.path = resolve(path, "--tokenizer", "tokenizer")
        if not self.path.exists():
            raise UserError(
                f"{self.path}: tokenizer not found; pass a Hugging Face tokenizer folder, a SentencePiece .model or a hub ID"
            )
        if self.path.is_file():
            self._load_sentencepiece()
        else:
            self._load_hf()
        self.info = TokenizerInfo(
            kind=self.kind,
            path=str(self.path),
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            fingerprint=self._fingerprint(),
            files=self._file_hashes(),
            source=str(path) if source is None else source,
        )

    # -- loading ---------------------------------------------------------------------------
    def _load_hf(self) -> None:
        if not any((self.path / name).exists() for name in HF_VOCAB_FILES):
            raise UserError(
                f"{self.path}: no tokenizer.json, vocab.txt or vocab.json in this folder; "
                "pass the teacher's tokenizer folder or a SentencePiece .model"
            )
        import transformers

        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(self.path), use_fast=True)
        except Exception:
            if not (self.path / "vocab.txt").exists():
                raise UserError(
                    f"{self.path}: transformers cannot load this tokenizer folder"
                ) from None
            tok = bert_tokenizer_from_vocab(self.path / "vocab.txt")
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            raise UserError(f"{self.path}: no fast (Rust) tokenizer available for this folder")
        backend.no_truncation()
        backend.no_padding()
        self.kind = "hf"
        self._backend = backend
        self._sp: Any = None
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        ids = {
            "cls": tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,
            "sep": tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,
            "pad": tok.pad_token_id,
            "mask": tok.mask_token_id,
            "unk": tok.unk_token_id,
        }
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise UserError(
                f"{self.path}: the tokenizer defines no {', '.join(missing)} token; a masked-LM tokenizer needs cls, sep, pad, mask and unk"
            )
        self.special_ids = SpecialIds(**{k: int(v) for k, v in ids.items()})
        self._vocab_in_order = [
            t
            for t, _ in sorted(
                backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]
            )
        ]

    def _load_sentencepiece(self) -> None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(self.path))
        except (OSError, RuntimeError):
            raise UserError(f"{self.path}: not a readable SentencePiece model") from None
        self.kind = "sentencepiece"
        self._sp = sp
        self._backend = None
        self.vocab_size = int(sp.GetPieceSize())
        unk = int(sp.unk_id())

        def piece(*names: str) -> int | None:
            for name in names:
                i = int(sp.PieceToId(name))
                if i != unk or name == sp.IdToPiece(unk):
                    return i
            return None

        ids = {
            "cls": piece("[CLS]", "<cls>", "<s>"),
            "sep": piece("[SEP]", "<sep>", "</s>"),
            "pad": int(sp.pad_id()) if sp.pad_id() >= 0 else piece("[PAD]", "<pad>"),
            "mask": piece("[MASK]", "<mask>"),
            "unk": unk,
        }
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise UserError(
                f"{self.path}: the SentencePiece model has no piece for {', '.join(missing)}; train it "
                "with user_defined_symbols [CLS],[SEP],[MASK] and a pad id (python -m data_prep.train_tokenizer --kind sentencepiece does)"
            )
        self.special_ids = SpecialIds(**{k: int(v) for k, v in ids.items() if v is not None})
        self._vocab_in_order = [sp.IdToPiece(i) for i in range(self.vocab_size)]

    # -- use -------------------------------------------------------------------------------
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without special tokens."""
        if self._sp is not None:
            return [list(ids) for ids in self._sp.EncodeAsIds(texts)]
        assert self._backend is not None
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        return [enc.ids for enc in encode(texts, add_special_tokens=False)]

    def encode_concat(
        self, texts: list[str], dtype: type[np.number]
    ) -> tuple[np.ndarray, np.ndarray]:
        """All ids of a batch in one array, and each text's length."""
        encoded = self.encode_batch(texts)
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(
            itertools.chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum())
        )
        return flat, lengths

    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id (``[MASK]``, ``<pad>``, ``##ing``, ``▁the``)."""
        return self._vocab_in_order[token_id]

    def decode(self, ids: list[int]) -> str:
        if self._sp is not None:
            return str(self._sp.DecodeIds(ids))
        assert self._backend is not None
        return str(self._backend.decode(ids, skip_special_tokens=False))

    # -- identity --------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(self.kind.encode())
        digest.update(json.dumps(asdict(self.special_ids), sort_keys=True).encode())
        digest.update("\n".join(self._vocab_in_order).encode("utf-8"))
        digest.update(json.dumps(self.encode_batch([PROBE_TEXT, PROBE_TEXT.lower()])).encode())
        return digest.hexdigest()

    def _file_hashes(self) -> dict[str, str]:
        if self.path.is_file():
            return {self.path.name: _sha256(self.path)}
        return {n: _sha256(self.path / n) for n in TOKENIZER_FILES if (self.path / n).is_file()}


def bert_tokenizer_from_vocab(vocab_file: Path, lowercase: bool = True, **kwargs: Any) -> Any:
    """A BERT fast tokenizer from a bare ``vocab.txt``, built with ``tokenizers`` directly
    (``kwargs``: more tokenizer settings, such as ``model_input_names``).

    (``BertTokenizerFast(vocab_file=...)`` silently yields a 5-token vocabulary in transformers 5,
    whose constructor takes ``vocab=``; this works on every version.)
    """
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    inner = BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase, strip_accents=lowercase)
    return BertTokenizerFast(tokenizer_object=inner._tokenizer, do_lower_case=lowercase, **kwargs)


HF_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def has_tokenizer_files(folder: str | os.PathLike[str]) -> bool:
    """Whether a Hugging Face folder carries a tokenizer (a model folder may not)."""
    return any((Path(folder) / name).is_file() for name in HF_VOCAB_FILES)


def check_model_tokenizer(
    model_dir: str | os.PathLike[str], data_tok: TokenizerInfo, data_dir: str | os.PathLike[str]
) -> bool:
    """Refuse a model folder whose tokenizer is not ``data_tok``, the one the shards of
    ``data_dir`` were made with.

    Data made with a SentencePiece ``.model`` is checked against the copy of that file a model
    folder carries (an export keeps it beside the converted Hugging Face tokenizer). A folder
    without tokenizer files cannot be checked: a warning says so and it returns False.
    """
    spm_copy = Path(model_dir) / Path(data_tok.path).name
    if data_tok.kind == "sentencepiece" and spm_copy.is_file():
        source = spm_copy
    elif has_tokenizer_files(model_dir):
        source = Path(model_dir)
    else:
        print(
            f"warning: {model_dir} has no tokenizer files; cannot check it against the data's "
            "tokenizer",
            file=sys.stderr,
            flush=True,
        )
        return False
    mine = TextTokenizer(source).info.fingerprint
    theirs = data_tok.fingerprint
    if mine != theirs:
        raise UserError(
            f"{model_dir}: its tokenizer (fingerprint {mine[:12]}) differs from the one "
            f"{data_dir}/manifest.json was built with ({theirs[:12]}, from "
            f"{data_tok.source or data_tok.path}); rebuild the data with python -m "
            f"data_prep.build_shards --tokenizer {model_dir} ..."
        )
    return True
