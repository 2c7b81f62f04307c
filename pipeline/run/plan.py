"""Everything a run resolves from files before any process group exists.

:func:`prepare` reads the data manifest, the DeepSpeed JSON, the teacher (or the MLM model) and
the student built from it and the teacher cache, and checks each against the others. (Which
checkpoint to resume from is decided after the process group starts: rank 0 chooses for all,
see :meth:`pipeline.checkpoint.manager.CheckpointManager.agree_resume`.) It runs on every rank alike, so bad input fails fast everywhere with the same
one-line error instead of leaving ranks waiting in a collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from data_prep.hub import ModelRef, resolve_ref
from data_prep.manifest import DataManifest
from data_prep.tokenizer import check_model_tokenizer
from pipeline.cache_teacher.reader import TeacherCache, open_cache
from pipeline.config.schema import Config, RunPaths
from pipeline.data.corpus import Corpus
from pipeline.data.shards import ShardedDataset
from pipeline.distributed.launch import DistEnv
from pipeline.model.alignment import Alignment, projection_shapes, resolve_alignment
from pipeline.model.importance import Importance
from pipeline.model.masked_lm import (
    MaskedLM,
    check_model_fits,
    load_mlm_model,
    load_teacher,
    model_shape,
)
from pipeline.model.selection import pruned_selection, pruning_report
from pipeline.model.student import Shape, student_from_config
from pipeline.run.cpu import bf16_note
from pipeline.run.ds_config import EngineSettings, engine_settings


@dataclass
class Plan:
    """Everything resolved before the process group starts."""

    paths: RunPaths
    models: ModelRefs
    corpus: Corpus
    manifest: DataManifest  # the corpus's (a blend's: combined)
    engine: EngineSettings
    student: MaskedLM
    teacher: MaskedLM | None  # None when no loss needs a teacher forward
    layer_map: list[int]
    alignment: Alignment | None  # None for MLM-only training
    max_steps: int
    identity: dict[str, Any]
    teacher_cache: TeacherCache | None = None
    notes: list[str] = field(default_factory=list)
    # init prune: what the student kept (written to RUN_DIR/pruning/kept.json)
    pruning: dict[str, Any] | None = None


def teacher_forward_needed(cfg: Config, cached: bool) -> bool:
    """Whether the teacher must run: for hidden-state losses, or for logits not in a cache."""
    return cfg.hidden_losses or (cfg.distilling and cfg.loss.alpha_ce > 0 and not cached)


def _no_forward_note(cfg: Config) -> str:
    if cfg.loss.alpha_ce > 0:
        why = "logits come from the teacher cache"
    elif cfg.model.init in ("teacher", "select", "prune"):
        why = "no teacher loss is on (the teacher only initialised the student)"
    else:
        why = "no teacher loss is on (the teacher only set its shape)"
    return f"no teacher forward: {why}"


@dataclass(frozen=True)
class ModelRefs:
    """The run's models, resolved once: the teacher (distillation) or the model (MLM only)."""

    teacher: ModelRef | None
    model: ModelRef | None


def resolve_models(cfg: Config) -> ModelRefs:
    """``model.teacher`` and ``model.model`` as local folders: hub IDs through the hub cache."""
    m = cfg.model
    return ModelRefs(
        teacher=resolve_ref(m.teacher, "--teacher") if m.teacher else None,
        model=resolve_ref(m.model, "--model") if m.model else None,
    )


@dataclass
class _Models:
    """The student, the teacher beside it (None without a forward) and how they pair up."""

    student: MaskedLM
    teacher: MaskedLM | None
    layer_map: list[int]
    alignment: Alignment | None
    pruning: dict[str, Any] | None = None


def _models(
    cfg: Config,
    models: ModelRefs,
    corpus: Corpus,
    cached: bool,
    notes: list[str],
    importance: Importance | None,
) -> _Models:
    """The models of the run, each checked against the data."""
    manifest = corpus.manifest
    if models.teacher is None:
        assert models.model is not None  # validate(): one of teacher and model
        where = models.model.path
        student = load_mlm_model(str(where), cfg.model.attn_implementation, cfg.model.dropout)
        check_model_fits(student.config, manifest, str(where))
        return _Models(student, None, [], None)
    where = models.teacher.path
    check_model_tokenizer(where, manifest.tokenizer, corpus.sources[0].path)
    teacher = load_teacher(
        str(where), cfg.model.attn_implementation, need_head=cfg.loss.alpha_ce > 0
    )
    check_model_fits(teacher.config, manifest, str(where))
    student, layer_map = student_from_config(teacher, cfg.model, importance)
    t_shape, s_shape = Shape.of(teacher.config), Shape.of(student.config)
    alignment = resolve_alignment(
        cfg.loss,
        t_shape,
        s_shape,
        layer_map,
        cfg.model.init,
        importance=importance,
        attention_refusal=teacher.kind.attention_refused(teacher.config, layer_map)
        or student.kind.attention_refused(student.config, list(range(student.num_layers))),
    )
    pruning = None
    if importance is not None and cfg.model.init == "prune":
        sel = pruned_selection(t_shape, s_shape, importance, layer_map)
        pruning = pruning_report(importance, t_shape, sel, layer_map)
    keep = teacher if teacher_forward_needed(cfg, cached) else None
    if keep is None:
        notes.append(_no_forward_note(cfg))
    return _Models(student, keep, layer_map, alignment, pruning)


def prepare(
    cfg: Config,
    paths: RunPaths,
    models: ModelRefs,
    env: DistEnv,
    device: torch.device,
    importance: Importance | None = None,
) -> Plan:
    """Every file of the run read and checked (this rank's share of the shard checksums);
    ``importance``: the calibration's scores, for ``init prune``
    (:func:`pipeline.run.calibration.calibrate`)."""
    corpus = Corpus(paths.sources)
    manifest = corpus.manifest
    if cfg.data.verify_checksums:
        for split in ("train", "valid"):
            ShardedDataset(paths.sources[0].path, split, manifest).verify_checksums(
                env.rank, env.world_size
            )
    engine = engine_settings(cfg, env.world_size, device.type)
    cached = bool(paths.teacher_cache) and cfg.distilling and cfg.loss.alpha_ce > 0
    notes: list[str] = []
    slow_bf16 = bf16_note() if device.type == "cpu" else None
    if slow_bf16 and (engine.precision == "bf16" or cfg.model.teacher_dtype == "bf16"):
        notes.append(slow_bf16)
    m = _models(cfg, models, corpus, cached, notes, importance)
    cache = None
    if cached:
        assert models.teacher is not None and paths.teacher_cache is not None
        cache = open_cache(cfg, models.teacher, paths.teacher_cache, corpus)
        notes.extend(cache.notes)
        if cfg.hidden_losses:
            notes.append(
                "teacher cache in use for the logits, but a loss on the teacher's hidden states or "
                "attention is on: the teacher still runs for those (the cache carries logits only)"
            )
    steps_per_epoch = manifest.train.num_sequences / cfg.train.global_batch_size
    max_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    identity = {
        "student": model_shape(m.student.config),
        "layer_map": m.layer_map,
        "objective_params": projection_shapes(cfg.loss, m.alignment),
        "tokenizer": manifest.tokenizer.fingerprint,
        "data_manifest": corpus.fingerprint,
    }
    source = models.teacher or models.model
    if source is not None and source.revision is not None:
        # a hub snapshot: a requeue that finds another revision of the name must not mix them
        identity["hub_revision"] = source.revision
    return Plan(paths, models, corpus, manifest, engine, m.student, m.teacher, m.layer_map,
                m.alignment, max_steps, identity, cache, notes, m.pruning)  # fmt: skip
