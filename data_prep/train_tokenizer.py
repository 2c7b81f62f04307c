"""Train a tokenizer on a corpus, for teachers trained from scratch.

    python -m data_prep.train_tokenizer --input SRC [SRC ...] --output OUT \\
        [--kind wordpiece|sentencepiece] [--vocab-size 30522] [--cased]

``wordpiece`` writes a Hugging Face folder (``tokenizer.json``, ``vocab.txt``, config) that
``BertTokenizerFast`` and ``AutoTokenizer`` load, with BERT's normalisation and special tokens.
``sentencepiece`` writes ``OUT/spm.model`` (unigram) with ``[CLS]``, ``[SEP]``, ``[MASK]`` and a pad
id, which ``build_shards --tokenizer OUT/spm.model`` takes. Inputs are read with the same
source readers as ``build_shards``.

Keep the trained folder: the ``tokenizers`` trainer breaks ties between equally frequent merges in
hash-map order, so two trainings on the same corpus can differ in a few rare tokens and in the
order of ids (seen here: 8 of 8,192 entries). Everything downstream checks the tokenizer's
fingerprint, so a retrained tokenizer is never mixed with shards made by another.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from data_prep.atomic import atomic_dir, check_output_dir
from data_prep.errors import UserError, cli_main
from data_prep.flags import HelpFormatter
from data_prep.sources import DocStats, ReadOptions, iter_documents, plan_units

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

COMMAND = "data_prep.train_tokenizer"


def corpus_texts(inputs: list[str], text_field: str, max_docs: int | None = None) -> Iterator[str]:
    """The documents of ``inputs``, in order, at most ``max_docs`` of them."""
    stats = DocStats()
    opts = ReadOptions(text_field=text_field)
    n = 0
    for unit in plan_units(inputs, unit_bytes=1 << 62, unit_rows=1 << 62):
        for text in iter_documents(unit, opts, stats):
            yield text
            n += 1
            if max_docs is not None and n >= max_docs:
                return


def train_wordpiece(texts: Iterator[str], out: Path, vocab_size: int, lowercase: bool) -> None:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=lowercase)
    fast.save_pretrained(str(out))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")


def train_sentencepiece(texts: Iterator[str], out: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.Train(
        sentence_iterator=(line for text in texts for line in text.splitlines() if line.strip()),
        model_prefix=str(out / "spm"),
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        character_coverage=0.9995,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        minloglevel=2,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.train_tokenizer",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="SRC",
        help="files, globs, save_to_disk folders or hf:NAME[:CONFIG], read as build_shards reads them",
    )
    p.add_argument("--output", required=True, help="folder to write the tokenizer to")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier tokenizer of this command in --output (nothing else is replaced)",
    )
    p.add_argument(
        "--kind",
        choices=("wordpiece", "sentencepiece"),
        default="wordpiece",
        help="wordpiece: a Hugging Face folder (BERT's normalisation and special tokens); "
        "sentencepiece: OUT/spm.model (unigram)",
    )
    p.add_argument(
        "--vocab-size", type=int, default=30522, help="entries of the vocabulary, specials included"
    )
    p.add_argument(
        "--cased",
        action="store_true",
        help="keep case and accents (default: lowercase, like bert-base-uncased)",
    )
    p.add_argument(
        "--text-field", default="text", help="the text field of jsonl / parquet / datasets rows"
    )
    p.add_argument(
        "--max-docs",
        type=int,
        default=None,
        help="train on the first N documents only (default: all)",
    )
    return p


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.vocab_size < len(SPECIAL_TOKENS) + 10:
        raise UserError(f"--vocab-size {args.vocab_size} is too small")
    out = Path(args.output)
    check_output_dir(out, COMMAND, args.overwrite)  # before the training, not after
    texts = corpus_texts(args.input, args.text_field, args.max_docs)
    with atomic_dir(out, COMMAND, args.overwrite) as tmp:  # never a half-made tokenizer under OUT
        if args.kind == "wordpiece":
            train_wordpiece(texts, tmp, args.vocab_size, lowercase=not args.cased)
        else:
            train_sentencepiece(texts, tmp, args.vocab_size)
    print(f"wrote {args.kind} tokenizer to {out}")


if __name__ == "__main__":
    main()
