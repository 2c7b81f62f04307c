"""The calibration pass of ``model.init prune``: the teacher's importance scores, measured once.

:func:`calibrate` runs on rank 0 before the plan (the caller broadcasts the result, so every
rank builds the same student from the same scores). It reads ``model.prune_samples`` sequences
of the training split, evenly spread over it, unmasked, runs the teacher over them in fp32 on the
rank's device (:func:`pipeline.model.importance.measure_importance`) and keeps the scores in
``RUN_DIR/pruning/importance.json``, keyed by what they depend on (the teacher, its revision, the
data and the number of sequences). A requeue finds the file and reuses it; a changed key measures
again. :func:`pruning_report` says what a pruned student kept; the trainer writes it beside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_prep.atomic import write_json
from data_prep.errors import UserError
from data_prep.versioned import load_versioned, stamp
from pipeline.checkpoint.history import check_run_folder
from pipeline.config.schema import Config, RunPaths
from pipeline.data.corpus import Corpus
from pipeline.data.shards import ShardedDataset
from pipeline.model.importance import Importance, measure_importance
from pipeline.model.masked_lm import MaskedLM, load_teacher
from pipeline.model.selection import PRUNING_DIR, spread
from pipeline.run.plan import ModelRefs

IMPORTANCE_FILE = "importance.json"
IMPORTANCE_FORMAT, IMPORTANCE_VERSION = "distil-teacher-importance", 1
BATCH = 16


def importance_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / PRUNING_DIR / IMPORTANCE_FILE


def _key(cfg: Config, models: ModelRefs, corpus: Corpus) -> dict[str, Any]:
    assert models.teacher is not None
    return {
        "teacher": str(models.teacher.path),
        "teacher_revision": models.teacher.revision,
        "data": corpus.fingerprint,
        "sequences": cfg.model.prune_samples,
    }


def _batches(
    dataset: ShardedDataset, count: int, pad_id: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    indices = spread(len(dataset), min(count, len(dataset)))
    out = []
    for start in range(0, len(indices), BATCH):
        seqs = [dataset[i] for i in indices[start : start + BATCH]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(seqs), width), dtype=torch.int64)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.from_numpy(seq.astype("int64"))
            mask[row, : len(seq)] = 1
        out.append((ids.to(device), mask.to(device)))
    return out


def _measure(teacher: MaskedLM, corpus: Corpus, count: int, device: torch.device) -> Importance:
    source = corpus.sources[0]
    dataset = ShardedDataset(source.path, "train", corpus.manifests[0])
    if len(dataset) == 0:
        raise UserError(f"{source.path}: no training sequences to calibrate model.init prune on")
    teacher.model.to(device)  # a copy of its own, dropped after the pass
    pad = corpus.manifest.special_ids.pad
    return measure_importance(teacher, _batches(dataset, count, pad, device))


def calibrate(
    cfg: Config, paths: RunPaths, models: ModelRefs, device: torch.device
) -> tuple[Importance, str] | None:
    """The teacher's importance for ``init prune`` (None for any other init) and a line saying
    whether it was measured or reused. Rank 0 only; the caller broadcasts."""
    if cfg.model.init != "prune" or models.teacher is None:
        return None
    corpus = Corpus(paths.sources)
    key = _key(cfg, models, corpus)
    path = importance_path(paths.output)
    if path.is_file():
        fix = "remove it to measure again"
        body = load_versioned(path, IMPORTANCE_FORMAT, IMPORTANCE_VERSION, fix)
        if body.get("key") == key:
            note = (
                f"pruning: reused the importance scores of {body['sequences']} sequences ({path})"
            )
            return Importance.from_dict(body), note
    check_run_folder(paths.output)  # never write into someone else's folder
    teacher = load_teacher(str(models.teacher.path), cfg.model.attn_implementation, False)
    importance = _measure(teacher, corpus, cfg.model.prune_samples, device)
    write_json(
        path, stamp({"key": key, **importance.to_dict()}, IMPORTANCE_FORMAT, IMPORTANCE_VERSION)
    )
    note = (
        f"pruning: measured the teacher's importance on {importance.sequences} sequences "
        f"({importance.tokens:,} tokens) -> {path}"
    )
    return importance, note
