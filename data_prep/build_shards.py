"""Tokenize a corpus with the teacher's tokenizer and write packed Megatron-LM shards.

    python -m data_prep.build_shards --input SRC [SRC ...] --tokenizer TOK --seq-len N \\
        --output DATA_DIR [--workers W] [--txt-docs blank|line|file] [--valid-fraction F]

How it works. The corpus is cut into work units of about ``--unit-size-mb`` (``sources``: small
files grouped, large files cut at record boundaries, Wikipedia dumps at their bz2 streams). For
each unit the main process reads pieces of whole records and ``--workers`` processes turn them
into documents and tokenize them; the main process packs the ids in order and streams them into
``DATA_DIR/{train,valid}/UNIT-K.bin/.idx`` (``shard_units``). A unit is finished when
``DATA_DIR/parts/unit-UNIT.json`` exists: a rerun skips finished units. ``--num-shards K
--shard-index i`` (or ``SLURM_ARRAY_TASK_ID``) does units ``i, i+K, ...`` only; ``--finalize``
then checks every unit and writes ``manifest.json`` (``prep_plan``). Output bytes depend on the
inputs and settings, never on the number of workers or array tasks. A document longer than
``--max-doc-mb`` is cut at line boundaries (counted in the manifest's stats), so memory depends
on the settings only.

A ``--tokenizer`` that is a model folder or hub ID whose config.json names a family distil cannot
distil (ModernBERT, DeBERTa, ELECTRA...; :mod:`data_prep.families`) is refused at once, before
anything is tokenized or written; ``--allow-any-model`` tokenizes anyway (shards for another tool).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data_prep.errors import UserError, cli_main
from data_prep.families import check_tokenizer_family
from data_prep.flags import HelpFormatter
from data_prep.hub import resolve
from data_prep.manifest import DataManifest, manifest_path
from data_prep.packing import PACK_MODES
from data_prep.prep_plan import PrepSettings, finalize, load_or_write_plan
from data_prep.progress import Progress
from data_prep.shard_units import process_units, unit_done
from data_prep.sources import TXT_DOCS, BadInput, unit_input_bytes
from data_prep.tokenizer import TextTokenizer


# --- command line -----------------------------------------------------------------------------
def _default_workers() -> int:
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return max(1, len(os.sched_getaffinity(0)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build_shards",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--input",
        nargs="+",
        metavar="SRC",
        help="files, globs, save_to_disk folders or hf:NAME[:CONFIG] (required unless --finalize)",
    )
    p.add_argument(
        "--tokenizer",
        help="the teacher's tokenizer: a Hugging Face folder or hub ID, or a SentencePiece .model "
        "(required unless --finalize)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        help="tokens per sequence, [CLS] and [SEP] included (required unless --finalize)",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="DATA_DIR",
        help="the folder to write: train/ and valid/ shards, manifest.json",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="tokenizer processes (default: CPUs)",
    )
    p.add_argument(
        "--valid-fraction", type=float, default=0.01, help="fraction of documents held out"
    )
    p.add_argument("--seed", type=int, default=1234, help="key of the train/valid split hash")
    p.add_argument(
        "--text-field", default="text", help="the text field of jsonl / parquet / datasets rows"
    )
    p.add_argument(
        "--txt-docs",
        choices=TXT_DOCS,
        default="blank",
        help="documents of .txt files: blank-line-separated blocks, each line, or each whole file",
    )
    p.add_argument(
        "--max-doc-mb",
        type=float,
        default=4,
        help="longer documents are cut at line boundaries (and counted); bounds memory",
    )
    p.add_argument(
        "--pack",
        choices=PACK_MODES,
        default="full",
        help="full: across documents (RoBERTa FULL-SENTENCES); doc: within one document",
    )
    p.add_argument(
        "--unit-size-mb",
        type=float,
        default=256,
        help="work units (and shards) of about this much text: small files are grouped, large "
        "ones cut",
    )
    p.add_argument(
        "--unit-rows",
        type=int,
        default=1_000_000,
        help="datasets are cut into units of this many rows",
    )
    p.add_argument(
        "--unit-max-files",
        type=int,
        default=0,
        help="at most this many files in one unit (default 0: as many as fit --unit-size-mb)",
    )
    p.add_argument(
        "--max-shard-tokens",
        type=int,
        default=1 << 28,
        help="tokens per shard before a new one starts",
    )
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.001,
        help="fail above this fraction of unusable documents",
    )
    p.add_argument("--hf-split", default="train", help="split of hf: and save_to_disk inputs")
    p.add_argument(
        "--hf-streaming",
        action="store_true",
        help="stream hf: datasets instead of downloading them first",
    )
    p.add_argument(
        "--num-shards",
        type=int,
        help="split the units across this many array tasks (default: SLURM_ARRAY_TASK_COUNT)",
    )
    p.add_argument(
        "--shard-index", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID)"
    )
    p.add_argument(
        "--finalize", action="store_true", help="only merge finished units into manifest.json"
    )
    p.add_argument(
        "--allow-any-model",
        action="store_true",
        help="tokenize with a --tokenizer model folder or hub ID whose config.json names a "
        "family distil cannot distil (shards for another tool); refused otherwise, before any "
        "tokenizing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _task_slice(args: argparse.Namespace) -> tuple[int, int] | None:
    num = args.num_shards
    index = args.shard_index
    in_array = os.environ.get("SLURM_ARRAY_TASK_ID", "").isdigit()
    if num is None and in_array and os.environ.get("SLURM_ARRAY_TASK_COUNT", "").isdigit():
        num = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    if index is None and in_array and num is not None:
        index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(
            os.environ.get("SLURM_ARRAY_TASK_MIN", "0")
        )
    if num is None and index is None:
        return None
    if num is None or index is None:
        raise UserError(
            "--num-shards and --shard-index go together (or run inside a Slurm array job)"
        )
    if not 0 <= index < num:
        raise UserError(f"--shard-index {index} is outside 0..{num - 1}")
    return num, index


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    data_dir = Path(args.output)
    if args.finalize:
        manifest = finalize(data_dir, args.max_bad_fraction)
        _print_summary(data_dir, manifest)
        return
    if not args.input or not args.tokenizer or args.seq_len is None:
        raise UserError("--input, --tokenizer and --seq-len are required (or --finalize)")
    if args.seq_len < 8:
        raise UserError(
            f"--seq-len {args.seq_len} is too small: a sequence holds [CLS], tokens and [SEP]; use 128 or 512"
        )
    if not 0 <= args.valid_fraction < 1:
        raise UserError(f"--valid-fraction {args.valid_fraction} must be in [0, 1)")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    max_doc = int(args.max_doc_mb * (1 << 20))
    unit_bytes = int(args.unit_size_mb * (1 << 20))
    if max_doc < 1024 or unit_bytes < 1024:
        raise UserError("--max-doc-mb and --unit-size-mb must be at least 0.001 (1 KiB)")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from --workers
    # A model folder of a family distil cannot distil is refused now, not after hours of
    # tokenizing (the hub ID resolved once: the tokenizer reads the same snapshot).
    tok_path = resolve(args.tokenizer, "--tokenizer", "tokenizer")
    if not args.allow_any_model:
        check_tokenizer_family(tok_path, args.tokenizer)
    tok = TextTokenizer(tok_path, source=args.tokenizer)
    settings = PrepSettings(
        inputs=tuple(args.input),
        seq_len=args.seq_len,
        pack=args.pack,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        text_field=args.text_field,
        txt_docs=args.txt_docs,
        max_doc_bytes=max_doc,
        unit_bytes=unit_bytes,
        unit_rows=args.unit_rows,
        unit_max_files=args.unit_max_files,
        max_shard_tokens=args.max_shard_tokens,
        hf_split=args.hf_split,
        hf_streaming=args.hf_streaming,
    )
    units = load_or_write_plan(data_dir, settings, tok)
    task = _task_slice(args)
    mine = units if task is None else units[task[1] :: task[0]]
    total = sum(unit_input_bytes(u) for u in mine if not unit_done(data_dir, u))
    progress = Progress("build_shards", total_bytes=total, enabled=not args.quiet)
    process_units(mine, settings.job(), tok, data_dir, args.workers, progress)
    progress.close()
    if task is None:
        manifest = finalize(data_dir, args.max_bad_fraction)
        _print_summary(data_dir, manifest)
    else:
        print(
            f"task {task[1]} of {task[0]}: {len(mine)} unit(s) done; run --finalize when all tasks end",
            file=sys.stderr,
        )


def _print_summary(data_dir: Path, manifest: DataManifest) -> None:
    for name, split in manifest.splits.items():
        print(
            f"{name}: {split.num_sequences:,} sequences, {split.num_tokens:,} tokens in "
            f"{len(split.shards)} shard(s)"
        )
    stats = manifest.stats
    skipped = stats.get("skipped", {})
    if skipped:
        parts = ", ".join(f"{n:,} {reason}" for reason, n in sorted(skipped.items()))
        print(f"left out on purpose (not documents): {parts}")
    cuts = stats.get("cut_documents", 0)
    if cuts:
        limit = manifest.settings["max_doc_bytes"] / (1 << 20)
        print(
            f"cut {cuts:,} time(s) at line boundaries: documents longer than --max-doc-mb {limit:g}"
        )
    bad = BadInput.from_json(stats["bad"])
    if bad.total:
        print(f"skipped {bad.total} unusable document(s): {bad.summary()}")
    print(f"wrote {manifest_path(data_dir)}")


if __name__ == "__main__":
    main()
