"""A teacher-cache job: its settings resolved from the command line and checked against the data,
the teacher and any job already started in CACHE_DIR, and the size it will write.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from data_prep.errors import UserError
from data_prep.flags import HelpFormatter, renamed
from data_prep.hub import ModelRef, resolve_ref
from data_prep.indexed import IndexedReader
from data_prep.manifest import DataManifest, ShardEntry
from data_prep.restartable import RestartableJob
from data_prep.tokenizer import check_model_tokenizer
from pipeline.cache_teacher import format as tc
from pipeline.config.cli import _parse_value, apply_overrides, field_docs, load_recipe, type_name
from pipeline.config.schema import Config, MaskingConfig, check_masking
from pipeline.config.sources import parse_sources
from pipeline.data.corpus import Corpus
from pipeline.data.masking import MaskingSpec, masking_spec
from pipeline.model.masked_lm import check_model_fits, teacher_dtype_name


# --- settings ---------------------------------------------------------------------------------
@dataclass
class Job:
    """Everything resolved from the command line and the inputs, identical on every rank."""

    corpus: Corpus  # one DATA_DIR, or every source of a blend (a cache serves any weights)
    teacher: ModelRef
    out: Path
    manifest: DataManifest
    masking: MaskingConfig
    seed: int
    temperature: float
    settings: dict[str, Any]  # mode, k, samples, num_views, id/value dtype, teacher vocab/dtype
    ident: dict[str, Any]
    teacher_files: dict[str, str]
    batch_size: int
    attn: str
    dtype: str

    @property
    def spec(self) -> MaskingSpec:
        return masking_spec(self.manifest, self.masking)

    @property
    def shards(self) -> list[ShardEntry]:
        return list(self.manifest.train.shards)

    def shard_prefix(self, i: int) -> Path:
        return self.shards[i].prefix(self.corpus.sources[0].path)

    @property
    def restartable(self) -> RestartableJob:
        """CACHE_DIR as a restartable job: plan.json, and a done marker per train shard."""
        return RestartableJob(
            folder=self.out,
            what="teacher cache",
            plan_name=tc.PLAN_NAME,
            plan_format=tc.FORMAT,
            plan_version=tc.FORMAT_VERSION,
            marker_of=lambda shard_path: tc.done_marker(self.out, shard_path),
            rerun="rerun the same cache_teacher command (done shards are kept)",
        )

    def plan(self) -> dict[str, Any]:
        """What a restart must agree with (plan.json), and the head of manifest.json."""
        return {
            "format": tc.FORMAT,
            "format_version": tc.FORMAT_VERSION,
            "identity": self.ident,
            "settings": self.settings,
            "sources": {
                "data": [str(Path(s.path).resolve()) for s in self.corpus.sources],
                "teacher": str(self.teacher.path.resolve()),
                "teacher_files": self.teacher_files,
            },
        }


# The training-config fields the job reads (they decide the masks and the cached values, and how
# the teacher runs): each is a flag spelled as the field, with the schema's type, default and doc.
RUN_FIELDS = (
    "train.seed",
    "loss.temperature",
    "masking.mlm_probability",
    "masking.mask_fraction",
    "masking.random_fraction",
    "masking.smoothing",
    "model.teacher_dtype",
    "model.attn_implementation",
)
# Old spellings, accepted (with a note on stderr) until the next release.
RENAMED = {
    "--out": "--output",
    "--seed": "--train.seed",
    "--temperature": "--loss.temperature",
    "--mlm-probability": "--masking.mlm_probability",
    "--mask-fraction": "--masking.mask_fraction",
    "--random-fraction": "--masking.random_fraction",
    "--smoothing": "--masking.smoothing",
    "--dtype": "--model.teacher_dtype",
    "--attn": "--model.attn_implementation",
}


class _Parser(argparse.ArgumentParser):
    """Takes the old spellings (:data:`RENAMED`) too, whoever calls ``parse_args``."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(renamed(argv, RENAMED, self.prog), namespace)


def config_field(dotted: str) -> tuple[Any, Any, str]:
    """(type, default, docstring) of the training-config field ``section.name``."""
    section, _, name = dotted.partition(".")
    cls = typing.get_type_hints(Config)[section]
    default = getattr(getattr(Config(), section), name)
    return typing.get_type_hints(cls)[name], default, field_docs(cls).get(name, "")


def _value_parser(hint: Any) -> Callable[[str], Any]:
    """A command-line value of a field of type ``hint``, read as ``pipeline.train`` reads it."""

    def parse(text: str) -> Any:
        try:
            return _parse_value(text, hint, "")
        except UserError:
            raise ValueError(text) from None  # argparse: "invalid float value: 'x'"

    parse.__name__ = type_name(hint)
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m pipeline.cache_teacher",
        description="Run the teacher once over the training data and cache its logits at the "
        "masked positions.",
        formatter_class=HelpFormatter,
        epilog="old spellings, accepted until the next release:\n"
        + "\n".join(f"  {old:<18} {new}" for old, new in RENAMED.items()),
    )
    p.add_argument(
        "--data",
        nargs="+",
        help="DATA_DIR written by data_prep.build_shards (a blend: its folders, in the training "
        "run's order; weights, if given as W:DIR, do not matter to the cache)",
    )
    p.add_argument("--teacher", help="the teacher: a Hugging Face masked-LM folder or hub ID")
    p.add_argument("--output", required=True, metavar="CACHE_DIR", help="the cache folder to write")
    p.add_argument(
        "--mode",
        choices=tc.MODES,
        default="topk",
        help="topk: the K most likely ids and log-probs; sample: N draws (RS-KD)",
    )
    p.add_argument("--top-k", type=int, help="top-k mode: tokens kept per masked position")
    p.add_argument(
        "--samples", type=int, help="sample mode: draws per masked position (slots kept)"
    )
    p.add_argument("--views", type=int, default=1, help="mask views V; epoch e uses view e mod V")
    p.add_argument(
        "--values", choices=tuple(tc.VALUE_DTYPES), default="fp16", help="top-k log-prob storage"
    )
    p.add_argument(
        "--config",
        metavar="RECIPE",
        help="the training run's recipe (a YAML file or a shipped recipe's name): the fields "
        "below come from it unless given as flags",
    )
    p.add_argument("--batch-size", type=int, default=64, help="sequences per teacher forward")
    p.add_argument(
        "--finalize",
        action="store_true",
        help="only check every shard is done and write manifest.json (pass the same arguments)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    run = p.add_argument_group(
        "training-config fields",
        textwrap.fill(
            "The training run's settings, spelled as its config fields (pipeline.train --help); "
            "the schema's default < the --config recipe < these flags.",
            initial_indent="  ",
            subsequent_indent="  ",
        ),
    )
    for dotted in RUN_FIELDS:
        hint, default, doc = config_field(dotted)
        kind: dict[str, Any] = (
            {"choices": typing.get_args(hint)}
            if typing.get_origin(hint) is Literal
            else {"type": _value_parser(hint), "metavar": type_name(hint).upper()}
        )
        run.add_argument(
            f"--{dotted}",
            dest=dotted,
            default=None,  # unset: the recipe's value, else the schema's default
            help=f"{doc} (default: the --config recipe's, else {default})".replace("%", "%%"),
            **kind,
        )
    return p


def run_config(args: argparse.Namespace) -> Config:
    """The training run's settings (:data:`RUN_FIELDS`): the defaults, then --config, then the
    flags, checked by the rules training uses."""
    cfg = Config()
    if args.config:
        apply_overrides(cfg, load_recipe(args.config), args.config)
    given = {dotted: getattr(args, dotted, None) for dotted in RUN_FIELDS}
    apply_overrides(cfg, {k: v for k, v in given.items() if v is not None}, "command line")
    if cfg.loss.temperature <= 0:
        raise UserError("--loss.temperature must be positive")
    check_masking(cfg.masking)
    return cfg


def resolve(args: argparse.Namespace, device: torch.device, teacher: ModelRef | None = None) -> Job:
    """Check the inputs and settings; every problem is one UserError, the same on every rank.
    ``teacher``: ``--teacher`` already resolved (by rank 0, for every rank)."""
    from transformers import AutoConfig

    if not args.data or not args.teacher:
        raise UserError("--data and --teacher are required")
    corpus = Corpus(parse_sources(args.data, need_weights=False))
    teacher = teacher or resolve_ref(args.teacher, "--teacher")
    teacher_dir = teacher.path
    manifest = corpus.manifest
    if args.mode == "topk":
        if args.samples is not None:
            raise UserError("--samples is for --mode sample; top-k mode takes --top-k K")
        if args.top_k is None or args.top_k < 1:
            raise UserError(
                "pass --top-k K (tokens kept per masked position, e.g. 32), or --mode sample --samples N"
            )
        k, samples = args.top_k, 0
    else:
        if args.top_k is not None:
            raise UserError(
                "--top-k is for --mode topk; sample mode keeps --samples N slots per position"
            )
        if args.samples is None or not 1 <= args.samples < 2**16:
            raise UserError("--mode sample needs --samples N with 1 <= N < 65536")
        k, samples = args.samples, args.samples
    if args.views < 1:
        raise UserError("--views must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    run = run_config(args)
    seed, temperature = run.train.seed, run.loss.temperature
    if not (teacher_dir / "config.json").is_file():
        raise UserError(f"{teacher_dir}: not a Hugging Face model folder (no config.json)")
    check_model_tokenizer(teacher_dir, manifest.tokenizer, corpus.sources[0].path)
    teacher_config = AutoConfig.from_pretrained(str(teacher_dir))
    check_model_fits(teacher_config, manifest, str(teacher_dir))
    teacher_vocab = int(teacher_config.vocab_size)
    if k > teacher_vocab:
        raise UserError(f"--top-k {k} is more than the teacher's vocabulary of {teacher_vocab}")
    dtype = teacher_dtype_name(run.model.teacher_dtype, device)
    spec = masking_spec(manifest, run.masking)
    teacher_fp = tc.teacher_fingerprint(teacher_dir)
    settings: dict[str, Any] = {
        "mode": args.mode,
        "k": k,
        "num_views": args.views,
        "id_dtype": tc.id_dtype(teacher_vocab).name,
        "value_dtype": tc.value_dtype(args.mode, args.values, samples).name,
        "teacher_vocab_size": teacher_vocab,
        "teacher_dtype": dtype,
    }
    if samples:
        settings["samples"] = samples
    return Job(
        corpus=corpus,
        teacher=teacher,
        out=Path(args.output),
        manifest=manifest,
        masking=run.masking,
        seed=seed,
        temperature=temperature,
        settings=settings,
        ident=tc.identity(
            teacher_fp["fingerprint"], corpus.content_fingerprint, manifest, spec, seed, temperature
        ),
        teacher_files=teacher_fp["files"],
        batch_size=args.batch_size,
        attn=run.model.attn_implementation,
        dtype=dtype,
    )


def check_plan(job: Job) -> bool:
    """True when CACHE_DIR/plan.json exists; refuse one written with other settings."""

    def differences(old: dict[str, Any]) -> list[str]:
        diffs = tc.identity_differences(old.get("identity", {}), job.ident)
        for key, value in job.settings.items():
            if old.get("settings", {}).get(key) != value:
                diffs.append(
                    f"{key} (started with {old.get('settings', {}).get(key)}, now {value})"
                )
        return diffs

    return job.restartable.check_plan(job.plan(), differences)


# --- sizes ------------------------------------------------------------------------------------
def planned_rows(job: Job, shard_nos: list[int]) -> int:
    """Masked positions of these shards (one view), counted exactly from their tokens."""
    return sum(
        int(tc.masked_counts(IndexedReader(job.shard_prefix(i)), job.spec).sum()) for i in shard_nos
    )


def planned_bytes(job: Job, shard_nos: list[int], rows: int) -> int:
    views = int(job.settings["num_views"])
    offsets = sum(job.shards[i].num_sequences + 1 for i in shard_nos) * tc.OFFSET_DTYPE.itemsize
    return views * (rows * tc.row_bytes(job.settings) + offsets)


def free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


def human_bytes(n: float) -> str:
    return f"{n / 1e9:,.3f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"
