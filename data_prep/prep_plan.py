"""The prep plan (``DATA_DIR/prep_plan.json``) and the finalize step that writes ``manifest.json``.

The plan records the settings, the tokenizer and the work units, so that every array task of a
job works on the same units and a rerun with other settings is refused. It also records a
signature of the inputs (paths and sizes): a task that finds a plan with the same signature takes
its units instead of planning again (planning decompresses large compressed files once to find
unit boundaries). ``finalize`` checks that every unit is finished and merges the unit records.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import write_json
from data_prep.errors import UserError
from data_prep.indexed import bin_path, idx_path, token_dtype_for_vocab
from data_prep.manifest import MANIFEST_NAME, SPLITS, DataManifest, ShardEntry, Split
from data_prep.shard_units import PARTS_DIR, JobSettings, prep_job, unit_counts_path
from data_prep.sources import BadInput, DocStats, ReadOptions, WorkUnit, plan_units
from data_prep.sources.inputs import input_signature
from data_prep.tokenizer import SpecialIds, TextTokenizer, TokenizerInfo


@dataclass(frozen=True)
class PrepSettings:
    """Every setting that shapes the output bytes (and so must agree across array tasks)."""

    inputs: tuple[str, ...]
    seq_len: int
    pack: str
    valid_fraction: float
    seed: int
    text_field: str
    txt_docs: str
    max_doc_bytes: int
    unit_bytes: int
    unit_rows: int
    unit_max_files: int
    max_shard_tokens: int
    hf_split: str
    hf_streaming: bool

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs"] = list(self.inputs)
        return out

    def job(self) -> JobSettings:
        read = ReadOptions(
            self.text_field, self.txt_docs, self.max_doc_bytes, hf_split=self.hf_split
        )
        return JobSettings(
            self.seq_len, self.pack, self.valid_fraction, self.seed, self.max_shard_tokens, read
        )

    def plan(self) -> list[WorkUnit]:
        return plan_units(
            list(self.inputs),
            self.unit_bytes,
            self.unit_rows,
            self.hf_split,
            self.hf_streaming,
            self.txt_docs,
            self.max_doc_bytes,
            self.unit_max_files,
        )


def load_or_write_plan(
    data_dir: Path, settings: PrepSettings, tok: TextTokenizer
) -> list[WorkUnit]:
    """The units of this job: from an existing plan of the same settings and inputs, or planned
    now (and written). A plan of other settings or other inputs is refused."""
    job = prep_job(data_dir)
    signature = input_signature(list(settings.inputs))
    new_settings = settings.to_json()
    old = job.read_plan()
    units: list[WorkUnit] | None = None

    def differences(old: dict[str, Any]) -> list[str]:
        nonlocal units
        diffs = [
            f"{k} (started with {old.get('settings', {}).get(k)}, now {v})"
            for k, v in new_settings.items()
            if old.get("settings", {}).get(k) != v
        ]
        if old.get("tokenizer", {}).get("fingerprint") != tok.info.fingerprint:
            diffs.append("tokenizer")
        if diffs or old.get("inputs_signature") == signature:
            return diffs
        units = settings.plan()  # same settings, inputs touched: the same units?
        if old.get("units") != [u.to_json() for u in units]:
            return ["input files (their sizes changed)"]
        return []

    if old is None:
        job.refuse_foreign()
    elif job.check_plan(new_settings, differences) and units is None:
        return [WorkUnit.from_json(u) for u in old["units"]]
    if units is None:
        units = settings.plan()
    job.write_plan(
        {
            "settings": new_settings,
            "tokenizer": tok.info.to_json(),
            "inputs_signature": signature,
            "units": [u.to_json() for u in units],
        }
    )
    return units


def _merge_units(
    data_dir: Path, records: list[dict[str, Any]], vocab_size: int
) -> tuple[dict[str, Split], dict[str, Any], np.ndarray]:
    """Totals over every unit record: splits with their shards, stats, token counts."""
    shards: dict[str, list[ShardEntry]] = {s: [] for s in SPLITS}
    stats = DocStats()
    documents = dict.fromkeys(SPLITS, 0)
    input_bytes = 0
    counts = np.zeros(vocab_size, dtype=np.int64)
    for record in records:
        for split in SPLITS:
            shards[split] += [ShardEntry(**shard) for shard in record["splits"][split]]
            documents[split] += record["documents"][split]
        stats.merge(
            DocStats(
                BadInput.from_json(record["bad"]),
                dict(record.get("skipped", {})),
                record.get("cut_documents", 0),
            )
        )
        input_bytes += record["input_bytes"]
        counts += np.load(unit_counts_path(data_dir, int(record["unit"]["index"])))
    splits = {
        split: Split(
            sum(s.num_sequences for s in entries),
            sum(s.num_tokens for s in entries),
            tuple(entries),
        )
        for split, entries in shards.items()
    }
    summary = {
        "documents": documents,
        "bad": stats.bad.to_json(),
        "skipped": stats.skipped,
        "cut_documents": stats.cuts,
        "input_bytes": input_bytes,
    }
    return splits, summary, counts


def _discard(data_dir: Path, splits: dict[str, Split]) -> None:
    """Remove every shard and unit marker (the bad-input limit was passed)."""
    for split in splits.values():
        for shard in split.shards:
            for path in (idx_path(shard.prefix(data_dir)), bin_path(shard.prefix(data_dir))):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    for marker in (data_dir / PARTS_DIR).glob("unit-*"):
        marker.unlink()


def finalize(data_dir: Path, max_bad_fraction: float) -> DataManifest:
    """Check every unit, merge the unit records into manifest.json (atomically, last)."""
    job = prep_job(data_dir)
    plan = job.read_plan()
    if plan is None:
        raise UserError(f"{job.plan_path}: missing; run build_shards on this folder first")
    records = job.finished_records([str(u["index"]) for u in plan["units"]])
    tok = plan["tokenizer"]
    splits, stats, counts = _merge_units(data_dir, records, tok["vocab_size"])
    bad = BadInput.from_json(stats["bad"])
    total_docs = sum(stats["documents"].values()) + bad.total
    if bad.total and bad.total > max_bad_fraction * total_docs:
        report = data_dir / "bad_input.json"
        write_json(report, {"documents": total_docs, **bad.to_json()})
        _discard(data_dir, splits)
        raise UserError(
            f"{bad.total} of {total_docs} documents ({100 * bad.total / total_docs:.2f}%) are unusable, "
            f"above --max-bad-fraction {max_bad_fraction}: {bad.summary()}. No shards were kept; "
            f"details in {report}. Fix the input or raise --max-bad-fraction"
        )
    if splits["train"].num_sequences == 0:
        raise UserError(f"{data_dir}: the corpus produced no training sequences; check --input")
    special_ids = SpecialIds(**tok["special_ids"])
    manifest = DataManifest(
        seq_len=plan["settings"]["seq_len"],
        vocab_size=tok["vocab_size"],
        dtype=np.dtype(token_dtype_for_vocab(tok["vocab_size"])).name,
        special_ids=special_ids,
        tokenizer=TokenizerInfo(**{**tok, "special_ids": special_ids}),
        settings=plan["settings"],
        splits=splits,
        stats=stats,
        token_counts=counts.tolist(),
    )
    job.publish(MANIFEST_NAME, manifest.to_json())
    return manifest
