"""``train.dry_run``: every check of a real run, then a summary, with nothing written.

``pipeline.train --train.dry_run`` goes as a real run goes up to the plan, under the same launcher
and so at the same world size: the config, the process group, the models resolved, the files read
and checked (:func:`pipeline.run.plan.prepare`: the data manifest and shards, the teacher and its
family, the student's shape, the objectives against both, the DeepSpeed config and the batch
split). Then, instead of the :class:`~pipeline.run.trainer.Trainer` (which writes the run files
and builds the engine), :func:`dry_run` does the Trainer's remaining checks that write nothing
(:func:`preview_resume`: the checkpoint ``train.resume`` would take, read, never set aside, and
checked against this run), and rank 0 prints a summary (:func:`summary`).

Nothing is written into RUN_DIR: no config.yaml, model/, checkpoints or tracker files.
``model.init prune`` measures the teacher's importance in memory when RUN_DIR holds no scores
to reuse (:func:`importance_read_only`). A resume's checksums are not read (sizes only): the real
run verifies them, and skips a damaged checkpoint with a warning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_prep.errors import UserError
from data_prep.versioned import load_versioned
from pipeline.checkpoint import store as ckpt
from pipeline.checkpoint.history import check_run_folder
from pipeline.checkpoint.manager import CHANGES_FILE, resume_changes
from pipeline.config.schema import LOSS_WEIGHTS, Config, RunPaths
from pipeline.data.corpus import Corpus
from pipeline.data.masking import make_masker
from pipeline.data.shards import ShardedDataset
from pipeline.distributed.comm import ControlGroup
from pipeline.distributed.launch import DistEnv
from pipeline.evaluation.probe import read_probe_examples
from pipeline.model.importance import Importance
from pipeline.model.masked_lm import (
    count_parameters,
    load_teacher,
    model_dims,
    teacher_dtype_name,
)
from pipeline.model.objective import StudentWithLoss
from pipeline.run import calibration
from pipeline.run.plan import ModelRefs, Plan

HEADER = "dry run: every check passed; nothing was written and no engine was started"


@dataclass
class ResumePreview:
    """What the run would do with RUN_DIR's checkpoints (read only)."""

    found: ckpt.CheckpointInfo | None
    notes: list[str] = field(default_factory=list)


def importance_read_only(
    cfg: Config, paths: RunPaths, models: ModelRefs, device: torch.device
) -> tuple[Importance, str] | None:
    """:func:`pipeline.run.calibration.calibrate` without writing: the scores in RUN_DIR when
    they fit this run, else measured in memory (rank 0 only; the caller broadcasts)."""
    if cfg.model.init != "prune" or models.teacher is None:
        return None
    corpus = Corpus(paths.sources)
    key = calibration._key(cfg, models, corpus)
    path = calibration.importance_path(paths.output)
    if path.is_file():
        body = load_versioned(
            path,
            calibration.IMPORTANCE_FORMAT,
            calibration.IMPORTANCE_VERSION,
            "remove it to measure again",
        )
        if body.get("key") == key:
            return Importance.from_dict(body), f"pruning: would reuse the scores in {path}"
    check_run_folder(paths.output)
    teacher = load_teacher(str(models.teacher.path), cfg.model.attn_implementation, False)
    importance = calibration._measure(teacher, corpus, cfg.model.prune_samples, device)
    note = (
        f"pruning: measured the teacher's importance on {importance.sequences} sequences "
        f"(kept in memory; a real run writes {path})"
    )
    return importance, note


def _check_output(run_dir: Path) -> None:
    """RUN_DIR can be made and written: the folder, or the nearest folder above it that exists."""
    check_run_folder(run_dir)
    here = run_dir.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not (here.is_dir() and os.access(here, os.W_OK | os.X_OK)):
        raise UserError(
            f"--output {run_dir}: {here} is not a folder this user can write in; choose another "
            "RUN_DIR"
        )


def preview_resume(cfg: Config, plan: Plan, world: int) -> ResumePreview:
    """The checkpoint ``train.resume`` would take and what resuming it would do, found as
    :meth:`pipeline.checkpoint.manager.CheckpointManager.agree_resume` finds it, with its
    refusals, but reading only: nothing is set aside and no history line is kept."""
    run_dir = Path(plan.paths.output)
    resume = cfg.train.resume
    _check_output(run_dir)
    found = ckpt.find_resume(run_dir, resume, verify=False)
    complete = ckpt.complete_checkpoints(run_dir)
    if resume == "none" and complete:
        raise UserError(
            f"{run_dir} holds checkpoints up to step {max(c.step for c in complete)}: --resume none "
            "would start a second run in the same folder; pass a new --output, or --resume auto "
            "to continue this run"
        )
    preview = ResumePreview(found)
    if found is None:
        return preview
    ckpt.check_compatible(found, plan.identity)
    inside = found.path.parent.resolve() == ckpt.checkpoint_root(run_dir).resolve()
    newer = [
        c.step
        for c in complete
        if (not inside or c.commit_index > found.commit_index)
        and c.path.resolve() != found.path.resolve()
    ]
    if newer:
        preview.notes.append(
            f"resuming would set aside the checkpoints committed after it (steps "
            f"{', '.join(map(str, newer))}) in {ckpt.checkpoint_root(run_dir)}/set-aside-TIME/"
        )
    changes = resume_changes(
        found.path, cfg.to_dict(), cfg.train.allow_config_change, run_dir / CHANGES_FILE
    )
    if changes:
        preview.notes.append(f"resuming with changed settings: {'; '.join(map(str, changes))}")
    if found.world_size != world:
        preview.notes.append(
            f"the checkpoint was saved by {found.world_size} rank(s): resuming on {world} "
            "converts it to a universal checkpoint first"
        )
    return preview


def _teacher_line(plan: Plan, cfg: Config, device: torch.device) -> str | None:
    ref = plan.models.teacher
    if ref is None:
        return None
    try:
        raw = json.loads((Path(ref.path) / "config.json").read_text())
    except (OSError, ValueError):
        raw = {}
    layers, hidden, heads, ffn = model_dims(raw)
    shape = (
        f"{raw.get('model_type', '?')}, {layers} layers x {hidden} wide, {heads} head(s), FFN {ffn}"
    )
    if plan.teacher is None:
        return f"teacher: {ref.name} ({shape}; no forward in this run)"
    dtype = teacher_dtype_name(cfg.model.teacher_dtype, device)
    params = count_parameters(plan.teacher)
    return f"teacher: {ref.name} ({shape}): {params:,} parameters, runs in {dtype}"


def summary(
    cfg: Config,
    env: DistEnv,
    device: torch.device,
    plan: Plan,
    module: StudentWithLoss,
    preview: ResumePreview,
) -> list[str]:
    """The lines rank 0 prints: models, layer map, losses, data, batch, steps, run folder."""
    t, es, manifest = cfg.train, plan.engine, plan.manifest
    lines = [HEADER]
    teacher = _teacher_line(plan, cfg, device)
    if teacher:
        lines.append(teacher)
    s = plan.student.config
    layers, hidden, heads, ffn = model_dims(s)
    extra = count_parameters(module) - count_parameters(plan.student)
    role = "student" if cfg.distilling else "model"
    init = f", init {cfg.model.init}" if cfg.distilling else ""
    lines.append(
        f"{role}: {s.model_type}, {layers} layers x {hidden} wide, {heads} head(s), FFN {ffn}: "
        f"{count_parameters(plan.student):,} parameters"
        + (f" (+{extra:,} in loss projections)" if extra else "")
        + init
    )
    if plan.layer_map:
        pairs = ", ".join(f"{j}<-{i}" for j, i in enumerate(plan.layer_map))
        lines.append(f"layer map (student<-teacher): {pairs}")
    names = LOSS_WEIGHTS if cfg.distilling else ("alpha_mlm",)  # MLM only: no teacher losses
    weights = {name: getattr(cfg.loss, name) for name in names}
    lines.append("losses: " + ", ".join(f"{k} {w:g}" for k, w in weights.items() if w > 0))
    epochs = plan.max_steps * t.global_batch_size / max(1, manifest.train.num_sequences)
    lines.append(
        f"data: {plan.corpus.describe()} (seq_len {manifest.seq_len}; "
        f"{manifest.train.num_sequences:,} train, {manifest.valid.num_sequences:,} valid sequences)"
    )
    lines.append(
        f"batch: global {t.global_batch_size} = micro {es.micro_batch} x accum {es.grad_accum} "
        f"x world {env.world_size} ({env.launcher}, {device.type})"
    )
    lines.append(
        f"max_steps: {plan.max_steps} ({epochs:.2f} epochs); precision {es.precision} "
        f"(ds_config {t.ds_config})"
    )
    run_dir = Path(plan.paths.output)
    state = "exists" if run_dir.is_dir() else "would be created"
    lines.append(f"run folder: {run_dir} ({state})")
    if preview.found is None:
        why = "--resume none" if t.resume == "none" else "no complete checkpoint"
        lines.append(f"resume: none ({why}): a fresh run from step 0")
    else:
        f = preview.found
        consumed = int(f.commit.get("consumed_samples", 0))
        lines.append(
            f"resume: from {f.path} (step {f.step}, {consumed:,} samples consumed, saved by "
            f"{f.world_size} rank(s))"
        )
    lines.extend(f"note: {note}" for note in [*plan.notes, *preview.notes])
    return lines


def dry_run(
    cfg: Config, env: DistEnv, device: torch.device, plan: Plan, control: ControlGroup
) -> int:
    """The checks the Trainer would make before its engine, read-only (collective); rank 0
    prints the summary. Returns 0; a failed check is a :class:`UserError` on every rank."""
    main = env.rank == 0

    def local_checks() -> StudentWithLoss:
        manifest = plan.manifest
        first = plan.paths.sources[0].path
        ShardedDataset(first, "train", manifest)
        if manifest.valid.num_sequences > 0:
            ShardedDataset(first, "valid", manifest)
        plan.corpus.order(cfg.train.seed)
        make_masker(manifest, cfg.masking)
        if plan.teacher is not None:
            teacher_dtype_name(cfg.model.teacher_dtype, device)
        if cfg.train.probe:
            read_probe_examples(Path(cfg.train.probe), cfg.train.probe_examples, main)
        return StudentWithLoss(plan.student, cfg.loss, plan.alignment, cfg.distilling)

    module = control.together(local_checks)
    # rank 0 chooses, as for a real run; every rank then reads the chosen checkpoint
    chosen = control.broadcast(
        control.together(lambda: preview_resume(cfg, plan, env.world_size) if main else None)
    )
    if chosen is not None and chosen.found is not None:
        path = chosen.found.path

        def read() -> None:
            try:
                ckpt.read_checkpoint(path)
            except UserError as exc:
                raise UserError(
                    f"rank {env.rank} cannot read the checkpoint rank 0 would resume from: {exc}. "
                    "Every node must see the same files: check the shared file system"
                ) from None

        control.together(read)
    if main:
        assert chosen is not None
        print("\n".join(summary(cfg, env, device, plan, module, chosen)), flush=True)
    control.barrier()
    return 0
