"""The prep plan (``DATA_DIR/prep_plan.json``) and the finalize step that writes ``manifest.json``.

The plan records the settings, the tokenizer and the work units, so that every array task of a
job works on the same units and a rerun with other settings is refused. It also records a
signature of the inputs (paths and sizes): a task that finds a plan with the same signature takes
its units instead of planning again (planning decompresses large compressed files once to find
unit boundaries). ``finalize`` checks that every unit is finished and merges the unit records.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import write_json
from data_prep.errors import UserError
from data_prep.indexed import bin_path, idx_path, token_dtype_for_vocab
from data_prep.manifest import FORMAT, FORMAT_VERSION, SPLITS, manifest_path
from data_prep.shard_units import PARTS_DIR, JobSettings
from data_prep.sources import BadInput, DocStats, ReadOptions, WorkUnit, plan_units
from data_prep.sources.inputs import input_signature
from data_prep.tokenizer import TextTokenizer

PLAN_NAME = "prep_plan.json"


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
    path = data_dir / PLAN_NAME
    signature = input_signature(list(settings.inputs))
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None:
        new_settings = settings.to_json()
        diffs = [k for k in new_settings if old.get("settings", {}).get(k) != new_settings[k]]
        if old.get("tokenizer", {}).get("fingerprint") != tok.info.fingerprint:
            diffs.append("tokenizer")
        if not diffs and old.get("inputs_signature") == signature:
            return [WorkUnit.from_json(u) for u in old["units"]]
        units = settings.plan() if not diffs else []
        if not diffs and old.get("units") != [u.to_json() for u in units]:
            diffs.append("input files (their sizes changed)")
        if diffs:
            raise UserError(
                f"{path}: {data_dir} was prepared with different {', '.join(diffs)}; "
                "use another --output folder, or delete this one to start over"
            )
    else:
        units = settings.plan()
    data_dir.mkdir(parents=True, exist_ok=True)
    plan = {
        "settings": settings.to_json(),
        "tokenizer": tok.info.to_json(),
        "inputs_signature": signature,
        "units": [u.to_json() for u in units],
    }
    write_json(path, plan)
    return units


def _merge_units(data_dir: Path, units: list[dict[str, Any]], vocab_size: int) -> dict[str, Any]:
    """Totals over every unit record: splits with their shards, documents, stats, token counts."""
    splits: dict[str, dict[str, Any]] = {
        s: {"num_sequences": 0, "num_tokens": 0, "shards": []} for s in SPLITS
    }
    stats = DocStats()
    documents = dict.fromkeys(SPLITS, 0)
    input_bytes = 0
    counts = np.zeros(vocab_size, dtype=np.int64)
    for u in units:
        stem = data_dir / PARTS_DIR / f"unit-{u['index']:05d}"
        record = json.loads(stem.with_suffix(".json").read_text())
        for split in SPLITS:
            for shard in record["splits"][split]:
                splits[split]["shards"].append(shard)
                splits[split]["num_sequences"] += shard["num_sequences"]
                splits[split]["num_tokens"] += shard["num_tokens"]
            documents[split] += record["documents"][split]
        stats.merge(
            DocStats(
                BadInput.from_json(record["bad"]),
                dict(record.get("skipped", {})),
                record.get("cut_documents", 0),
            )
        )
        input_bytes += record["input_bytes"]
        counts += np.load(stem.with_suffix(".counts.npy"))
    return {
        "splits": splits,
        "stats": {
            "documents": documents,
            "bad": stats.bad.to_json(),
            "skipped": stats.skipped,
            "cut_documents": stats.cuts,
            "input_bytes": input_bytes,
        },
        "token_counts": counts,
    }


def _discard(data_dir: Path, splits: dict[str, Any]) -> None:
    """Remove every shard and unit marker (the bad-input limit was passed)."""
    for split in SPLITS:
        for shard in splits[split]["shards"]:
            for path in (idx_path(data_dir / shard["path"]), bin_path(data_dir / shard["path"])):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    for marker in (data_dir / PARTS_DIR).glob("unit-*"):
        marker.unlink()


def finalize(data_dir: Path, max_bad_fraction: float) -> dict[str, Any]:
    """Check every unit, merge the unit records into manifest.json (atomically)."""
    plan_path = data_dir / PLAN_NAME
    if not plan_path.is_file():
        raise UserError(f"{plan_path}: missing; run build_shards on this folder first")
    plan = json.loads(plan_path.read_text())
    units = plan["units"]
    missing = [
        u["index"]
        for u in units
        if not (data_dir / PARTS_DIR / f"unit-{u['index']:05d}.json").is_file()
    ]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise UserError(
            f"{data_dir}: {len(missing)} of {len(units)} units are not finished ({shown}); rerun the "
            "array tasks that own them (or build_shards without --num-shards), then --finalize"
        )
    tok = plan["tokenizer"]
    merged = _merge_units(data_dir, units, tok["vocab_size"])
    splits, stats = merged["splits"], merged["stats"]
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
    if splits["train"]["num_sequences"] == 0:
        raise UserError(f"{data_dir}: the corpus produced no training sequences; check --input")
    settings = plan["settings"]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seq_len": settings["seq_len"],
        "vocab_size": tok["vocab_size"],
        "dtype": np.dtype(token_dtype_for_vocab(tok["vocab_size"])).name,
        "special_ids": tok["special_ids"],
        "tokenizer": tok,
        "settings": settings,
        "splits": splits,
        "stats": stats,
        "token_counts": merged["token_counts"].tolist(),
    }
    write_json(manifest_path(data_dir), manifest)
    return manifest
