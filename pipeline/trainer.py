"""The training loop: student in a DeepSpeed ZeRO engine, the teacher beside it, never inside.

:func:`prepare` does every check that reads files (data, teacher, DeepSpeed JSON, batch split,
checkpoint) before any process group exists, so bad input fails fast on every rank alike.
:class:`Trainer` then owns the loop: micro-batches from background workers, teacher targets under
``inference_mode``, ``engine.backward`` / ``engine.step``, logging, validation, checkpoints, and
preemption (a signal sets a flag; every rank agrees at the next step boundary, saves, exits).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data_prep.errors import UserError
from data_prep.manifest import load_manifest, manifest_fingerprint
from data_prep.tokenizers import check_model_tokenizer
from pipeline import checkpoint as ckpt_mod
from pipeline.config import Config, save_config
from pipeline.data import (
    BatchLayout,
    EvalBatches,
    MicroBatches,
    ShardedDataset,
    loader,
    make_masker,
    masking_spec,
)
from pipeline.dist import DistEnv
from pipeline.ds_config import EngineSettings, engine_settings
from pipeline.evaluate import SUMS, batch_sums, summarize
from pipeline.losses import StudentWithLoss, TeacherTargets, nonpad_rows, scored_rows, take_rows
from pipeline.models import (
    MaskedLM,
    build_student,
    count_parameters,
    load_mlm_model,
    load_teacher,
    model_shape,
)

EXIT_NONFINITE = 3


class LossScaleWatch:
    """Counts consecutive optimizer steps with the fp16 loss scale at its floor.

    A few skipped (overflowing) steps are normal with dynamic loss scaling; a scale pinned at its
    minimum means every step overflows and the run makes no progress.
    """

    def __init__(self, min_scale: float, patience: int) -> None:
        self.min_scale = min_scale
        self.patience = patience
        self.at_floor = 0

    def update(self, scale: float | None) -> bool:
        """Record this step's scale; True when the run should stop."""
        if scale is None:
            return False
        self.at_floor = self.at_floor + 1 if scale <= self.min_scale else 0
        return self.patience > 0 and self.at_floor >= self.patience


@dataclass
class Plan:
    """Everything resolved before the process group starts."""

    manifest: dict[str, Any]
    engine: EngineSettings
    student: MaskedLM
    teacher: MaskedLM | None
    layer_map: list[int]
    max_steps: int
    resume: ckpt_mod.CheckpointInfo | None
    identity: dict[str, Any]
    teacher_cache: Any = None
    notes: list[str] = field(default_factory=list)


def _teacher_needed(cfg: Config) -> tuple[bool, bool]:
    """(teacher forward needed, MLM head needed) for the active losses."""
    if not cfg.distilling:
        return False, False
    loss = cfg.loss
    logits = loss.alpha_ce > 0
    hidden = loss.alpha_cos > 0 or loss.alpha_mse > 0
    forward = hidden or (logits and cfg.data.teacher_cache is None)
    return forward, logits


def _check_model_fits(model: MaskedLM, manifest: dict[str, Any], what: str) -> None:
    vocab = int(getattr(model.config, "vocab_size", 0))
    if vocab < int(manifest["vocab_size"]):
        raise UserError(
            f"{what}: vocabulary of {vocab} is smaller than the data's {manifest['vocab_size']}; the data was built with another tokenizer"
        )
    max_pos = int(getattr(model.config, "max_position_embeddings", 10**9))
    if int(manifest["seq_len"]) > max_pos:
        raise UserError(
            f"{what}: max_position_embeddings {max_pos} < the data's seq_len {manifest['seq_len']}; rebuild the data with --seq-len {max_pos}"
        )


def prepare(cfg: Config, env: DistEnv, device: torch.device) -> Plan:
    manifest = load_manifest(cfg.data.data)  # type: ignore[arg-type]
    train_len = int(manifest["splits"]["train"]["num_sequences"])
    engine = engine_settings(cfg, env.world_size, device.type)
    forward, need_head = _teacher_needed(cfg)
    notes: list[str] = []
    teacher: MaskedLM | None = None
    if cfg.distilling:
        assert cfg.model.teacher is not None
        if not check_model_tokenizer(cfg.model.teacher, manifest, str(cfg.data.data)):
            print(
                f"warning: {cfg.model.teacher} has no tokenizer files; cannot check it against "
                "the data's tokenizer",
                file=sys.stderr,
            )
        teacher_full = load_teacher(
            cfg.model.teacher, cfg.model.attn_implementation, need_head=need_head
        )
        _check_model_fits(teacher_full, manifest, cfg.model.teacher)
        student, layer_map = build_student(
            teacher_full,
            cfg.model.student_layers,
            cfg.model.layer_map,
            cfg.model.init,
            cfg.model.attn_implementation,
            cfg.model.dropout,
        )
        teacher = teacher_full if forward else None
        if not forward:
            notes.append(
                "no teacher forward: "
                + (
                    "logits come from the teacher cache"
                    if cfg.loss.alpha_ce > 0
                    else (
                        "no teacher loss is on (the teacher only "
                        + (
                            "initialised the student)"
                            if cfg.model.init == "teacher"
                            else "set its shape)"
                        )
                    )
                )
            )
    else:
        assert cfg.model.model is not None
        student = load_mlm_model(cfg.model.model, cfg.model.attn_implementation, cfg.model.dropout)
        _check_model_fits(student, manifest, cfg.model.model)
        layer_map = []
    cache = None
    if cfg.data.teacher_cache and cfg.distilling and cfg.loss.alpha_ce > 0:
        from pipeline.teacher_cache import open_cache

        cache = open_cache(cfg, manifest)
        notes.extend(cache.notes)
        if cfg.loss.alpha_cos > 0 or cfg.loss.alpha_mse > 0:
            notes.append(
                "teacher cache in use for the logits, but a hidden-state loss is on: the teacher still runs for hidden states"
            )
    steps_per_epoch = train_len / cfg.train.global_batch_size
    max_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    identity = {
        "student": model_shape(student.config),
        "layer_map": layer_map,
        "tokenizer": manifest["tokenizer"]["fingerprint"],
        "data_manifest": manifest_fingerprint(cfg.data.data),  # type: ignore[arg-type]
    }
    resume = ckpt_mod.find_resume(cfg.train.output, cfg.train.resume, warn=env.is_main)  # type: ignore[arg-type]
    if resume is not None:
        ckpt_mod.check_compatible(resume, identity)
        if resume.world_size != env.world_size:
            engine.config.setdefault("checkpoint", {})["load_universal"] = True
    return Plan(
        manifest, engine, student, teacher, layer_map, max_steps, resume, identity, cache, notes
    )


def _lr_lambda(max_steps: int, warmup_fraction: float) -> Any:
    warmup = max(1, round(warmup_fraction * max_steps)) if warmup_fraction > 0 else 0

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return fn


def build_optimizer(
    module: torch.nn.Module, cfg: Config, device: torch.device
) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (
                no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay
            ).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    o = cfg.optim
    kwargs: dict[str, Any] = {"lr": o.lr, "betas": tuple(o.betas), "eps": o.eps}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv, device: torch.device, plan: Plan) -> None:
        import deepspeed

        self.cfg, self.env, self.device, self.plan = cfg, env, device, plan
        self.run_dir = Path(cfg.train.output)  # type: ignore[arg-type]
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.ctrl_group = dist.new_group(backend="gloo") if device.type == "cuda" else None
        manifest = plan.manifest
        self.pad_id = int(manifest["special_ids"]["pad"])
        self.train_ds = ShardedDataset(str(cfg.data.data), "train", manifest)
        self.valid_ds = (
            ShardedDataset(str(cfg.data.data), "valid", manifest)
            if manifest["splits"]["valid"]["num_sequences"]
            else None
        )
        m = cfg.masking
        self.masker = make_masker(
            manifest,
            masking_spec(
                manifest, m.mlm_probability, m.mask_fraction, m.random_fraction, m.smoothing
            ),
        )
        # Validation scores plain BERT masking (no frequency smoothing), as pipeline.evaluate does.
        self.eval_masker = make_masker(manifest, masking_spec(manifest, 0.15, 0.8, 0.1, 0.0))
        es = plan.engine
        self.layout = BatchLayout(
            cfg.train.global_batch_size, es.micro_batch, es.grad_accum, self.world, self.rank
        )
        if self.rank == 0:
            self._write_run_files()
        dist.barrier()

        self.teacher = plan.teacher
        if self.teacher is not None:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(
                cfg.model.teacher_dtype
            )
            if dtype is None:  # auto
                dtype = torch.float16 if device.type == "cuda" else torch.float32
            if dtype == torch.float16 and device.type != "cuda":
                raise UserError(
                    "model.teacher_dtype fp16 does not run on a CPU; use bf16 or fp32 (or auto)"
                )
            self.teacher.to(device=device, dtype=dtype)
            if cfg.model.compile:
                self.teacher.compile_encoder()
        module = StudentWithLoss(plan.student, cfg.loss, plan.layer_map, cfg.distilling)
        if cfg.model.compile:
            plan.student.compile_encoder()
        optimizer = build_optimizer(module, cfg, device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(plan.max_steps, cfg.optim.warmup_fraction)
        )
        self.engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=es.config,
            dist_init_required=False,
        )
        self.step, self.consumed = 0, 0
        if plan.resume is not None:
            self._resume(plan.resume)

    # -- setup -----------------------------------------------------------------------------
    def _write_run_files(self) -> None:
        from pipeline.export import save_run_model_files

        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(
            self.cfg,
            self.run_dir / "config.yaml",
            {
                "world_size": self.world,
                "micro_batch_size": self.plan.engine.micro_batch,
                "grad_accum": self.plan.engine.grad_accum,
                "precision": self.plan.engine.precision,
                "max_steps": self.plan.max_steps,
                "layer_map": self.plan.layer_map,
                "ds_config": self.plan.engine.config,
            },
        )
        save_run_model_files(self.run_dir, self.plan.student, self.plan.manifest, self.cfg)

    def _resume(self, ckpt: ckpt_mod.CheckpointInfo) -> None:
        same_world = ckpt.world_size == self.world
        if same_world:
            load_dir, tag = str(ckpt.path.parent), ckpt.tag
        else:
            if self.rank == 0:
                print(
                    f"resuming {ckpt.tag} (saved by {ckpt.world_size} ranks) on {self.world}: converting to a universal checkpoint",
                    flush=True,
                )
                ckpt_mod.ensure_universal(ckpt)
            dist.barrier()
            load_dir, tag = str(ckpt.path.parent), ckpt_mod.universal_path(ckpt).name
        path, _client = self.engine.load_checkpoint(load_dir, tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {ckpt.path}")
        self.step = int(ckpt.commit["step"])
        self.consumed = int(ckpt.commit["consumed_samples"])
        state = ckpt_mod.load_rank_state(ckpt, self.rank) if same_world else None
        if state is not None:
            ckpt_mod.restore_rng(state)
        else:
            torch.manual_seed(self.cfg.train.seed * 100_003 + self.step * 1_009 + self.rank)
        if self.rank == 0:
            print(
                f"resumed from {ckpt.path} at step {self.step} ({self.consumed:,} samples consumed)",
                flush=True,
            )

    # -- one step ----------------------------------------------------------------------------
    def _teacher_targets(
        self,
        input_ids: torch.Tensor,
        attn: torch.Tensor | None,
        rows: torch.Tensor,
        pad_rows: torch.Tensor | None,
        batch: dict[str, torch.Tensor],
    ) -> TeacherTargets | None:
        loss = self.cfg.loss
        targets = TeacherTargets()
        if "teacher_ids" in batch:  # read from the cache by the data-loader worker
            if batch["teacher_ids"].shape[0] != rows.numel():
                raise ValueError("teacher cache rows are not the scored rows (ce_positions 'all'?)")
            nb = self.device.type == "cuda"
            targets.sparse_ids = batch["teacher_ids"].to(self.device, non_blocking=nb)
            targets.sparse_logp = batch["teacher_logp"].to(self.device, non_blocking=nb)
        elif self.plan.teacher_cache is not None and loss.alpha_ce > 0:
            targets.sparse_ids, targets.sparse_logp = self.plan.teacher_cache.lookup(
                batch, rows, self.device
            )
        if self.teacher is None:
            return targets if self.cfg.distilling else None
        need_logits = loss.alpha_ce > 0 and targets.sparse_ids is None
        with torch.inference_mode():
            last, hidden = self.teacher.encode(input_ids, attn, all_layers=loss.alpha_mse > 0)
            logits = self.teacher.head(take_rows(last, rows)) if need_logits else None
            cos = take_rows(last, pad_rows) if loss.alpha_cos > 0 else None
            layers = (
                [take_rows(hidden[t + 1], pad_rows) for t in self.plan.layer_map]
                if hidden is not None
                else None
            )
        # Inference tensors cannot be saved for backward: plain copies of the few rows we keep.
        targets.logits = logits.clone() if logits is not None else None
        targets.last_hidden = cos.clone() if cos is not None else None
        targets.layers = [h.clone() for h in layers] if layers is not None else None
        return targets

    def _micro_step(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        attn_cpu = batch["attention_mask"]
        rows_cpu = scored_rows(batch["labels"], attn_cpu, self.cfg.loss.ce_positions)
        pad_cpu = nonpad_rows(attn_cpu)
        tokens = int(attn_cpu.sum())
        dev = self.device
        nb = dev.type == "cuda"
        input_ids = batch["input_ids"].to(dev, non_blocking=nb)
        labels = batch["labels"].to(dev, non_blocking=nb)
        attn = None if pad_cpu is None else attn_cpu.to(dev, non_blocking=nb)
        rows = rows_cpu.to(dev, non_blocking=nb)
        pad_rows = None if pad_cpu is None else pad_cpu.to(dev, non_blocking=nb)
        targets = self._teacher_targets(input_ids, attn, rows, pad_rows, batch)
        loss, terms = self.engine(input_ids, attn, labels, rows, pad_rows, targets)
        self.engine.backward(loss)
        self.engine.step()
        return loss, terms, tokens

    # -- control -----------------------------------------------------------------------------
    def _agree(self, flag: bool) -> bool:
        """True on every rank when any rank's flag is set (a gloo all-reduce: no GPU sync)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.ctrl_group)
        return bool(t.item())

    def _install_signals(self) -> None:
        self._signalled: str | None = None

        def handler(signum: int, _frame: Any) -> None:
            self._signalled = signal.Signals(signum).name

        for name in self.cfg.train.preempt_signals:
            try:
                signal.signal(getattr(signal, name), handler)
            except (AttributeError, ValueError):
                raise UserError(f"train.preempt_signals: unknown signal {name}") from None

    def _loss_scale(self) -> float | None:
        if self.plan.engine.precision != "fp16":
            return None
        opt = self.engine.optimizer
        return float(getattr(opt, "loss_scale", getattr(opt, "cur_scale", 0.0)))

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.valid_ds is None:
            return {}
        student = self.engine.module.student
        student.eval()
        data = EvalBatches(
            self.valid_ds,
            self.eval_masker,
            self.cfg.train.seed,
            self.layout.micro_batch,
            self.rank,
            self.world,
            self.cfg.train.eval_samples,
            self.pad_id,
        )
        sums = torch.zeros(len(SUMS), dtype=torch.float64)
        for batch in loader(data, 0, False):
            sums += batch_sums(student, self.teacher, batch, self.device)
        student.train()
        dist.all_reduce(sums, group=self.ctrl_group)
        return summarize(sums, self.teacher is not None)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        from pipeline.logging import RunLogger

        cfg, t = self.cfg, self.cfg.train
        max_steps = self.plan.max_steps
        log = RunLogger(self.run_dir, self.rank == 0, max_steps, self.step)
        for note in self.plan.notes:
            log.info(f"note: {note}")
        log.info(
            f"{'distilling a' if cfg.distilling else 'MLM training of a'} {count_parameters(self.plan.student):,}-parameter {'student' if cfg.distilling else 'model'}"
            f"{f' from a {self.teacher.num_layers}-layer teacher' if self.teacher is not None else ''} on {self.world} rank(s) "
            f"({self.env.launcher}, {self.device.type}, {self.plan.engine.precision}); global batch {t.global_batch_size} = "
            f"{self.layout.micro_batch} x {self.layout.grad_accum} x {self.world}; steps {self.step} -> {max_steps}"
        )
        self._install_signals()
        data = MicroBatches(
            self.train_ds,
            self.layout,
            self.masker,
            t.seed,
            self.consumed,
            max_steps - self.step,
            self.pad_id,
            self.plan.teacher_cache.num_views if self.plan.teacher_cache is not None else 0,
            cache=self.plan.teacher_cache,
        )
        batches = iter(loader(data, cfg.data.num_workers, self.device.type == "cuda"))
        sums: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), device=self.device)
        fp16 = self.plan.engine.precision == "fp16"
        min_scale = float(self.plan.engine.config.get("fp16", {}).get("min_loss_scale", 1))
        scale_watch = LossScaleWatch(min_scale, t.max_min_scale_steps)
        tokens = 0
        steps_in_window = 0
        window_start = time.perf_counter()
        steps_this_process = 0
        exit_code = 0
        samples = self._open_sample_log() if t.sample_log else None
        self.engine.train()
        while self.step < max_steps:
            for micro in range(self.layout.grad_accum):
                batch = next(batches)
                if samples is not None:
                    samples.write(
                        json.dumps(
                            {
                                "step": self.step + 1,
                                "micro": micro,
                                "samples": batch["sample_index"].tolist(),
                                "views": batch["view"].tolist(),
                            }
                        )
                        + "\n"
                    )
                loss, terms, ntok = self._micro_step(batch)
                tokens += ntok
                finite = torch.isfinite(loss)
                nonfinite += (~finite).float()
                # fp16 overflows are skipped steps, not data: keep them out of the averages.
                for k, v in terms.items():
                    zero = torch.zeros((), device=self.device, dtype=torch.float64)
                    sums[k] = sums.get(k, zero) + torch.where(finite, v.double(), zero)
            self.step += 1
            self.consumed += t.global_batch_size
            steps_this_process += 1
            steps_in_window += 1
            end = self.step >= max_steps
            if self.step % t.log_every == 0 or end:
                record = self._reduce_log(sums, tokens, steps_in_window, window_start, nonfinite)
                if record["nonfinite_losses"] and not fp16:
                    log.info(
                        f"error: non-finite loss at step {self.step}; stopping without saving. The last good checkpoint is {self._last_checkpoint()}; lower the lr or check the data, then resume"
                    )
                    exit_code = EXIT_NONFINITE
                    break
                log.log_step(record)
                sums, tokens, steps_in_window, window_start = {}, 0, 0, time.perf_counter()
                nonfinite.zero_()
            if scale_watch.update(self._loss_scale()):
                log.info(
                    f"error: the fp16 loss scale has been at its minimum ({min_scale:g}) for "
                    f"{scale_watch.at_floor} steps: every step overflows. Stopping without saving; "
                    f"the last good checkpoint is {self._last_checkpoint()}. Lower the lr, use bf16 "
                    "(ds_configs/zero2_bf16.json), or check the data, then resume"
                )
                exit_code = EXIT_NONFINITE
                break
            if (t.eval_every and self.step % t.eval_every == 0) or end:
                log.log_eval(self.step, self.evaluate())
            preempt = self._agree(self._signalled is not None)
            stop = preempt or (t.stop_after_steps and steps_this_process >= t.stop_after_steps)
            if (t.save_every and self.step % t.save_every == 0) or end or stop:
                if self._agree(not self._params_finite()):
                    log.info(
                        f"error: non-finite weights at step {self.step}; not saving. The last good checkpoint is {self._last_checkpoint()}"
                    )
                    exit_code = EXIT_NONFINITE
                    break
                saving = time.perf_counter()
                path = ckpt_mod.save(
                    self.engine,
                    self.run_dir,
                    self.step,
                    self.consumed,
                    self.plan.identity,
                    t.keep_last,
                )
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                log.info(
                    f"saved checkpoint {path} ({size / 2**20:,.0f} MiB in "
                    f"{time.perf_counter() - saving:.1f} s)"
                )
            if stop:
                if preempt:
                    log.info(
                        f"preempted ({self._signalled or 'signal on another rank'}): checkpoint at step {self.step}; exiting with {t.preempt_exit_code}"
                    )
                    exit_code = t.preempt_exit_code
                break
        log.close()
        if samples is not None:
            samples.close()
        return exit_code

    def _open_sample_log(self) -> Any:
        from pipeline.logging import truncate_after

        path = self.run_dir / "samples" / f"rank{self.rank:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        truncate_after(path, self.step)
        return open(path, "a", buffering=1)

    def _params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.engine.module.parameters())

    def _last_checkpoint(self) -> str:
        found = ckpt_mod.find_resume(self.run_dir, "auto", warn=False)
        return str(found.path) if found else "(none)"

    def _reduce_log(
        self,
        sums: dict[str, torch.Tensor],
        tokens: int,
        steps: int,
        start: float,
        nonfinite: torch.Tensor,
    ) -> dict[str, Any]:
        keys = sorted(sums)
        vec = torch.stack(
            [sums[k] for k in keys]
            + [
                torch.tensor(float(tokens), device=self.device, dtype=torch.float64),
                nonfinite.double(),
            ]
        )
        dist.all_reduce(vec)
        vec = vec.cpu()
        skipped = int(vec[-1].item())
        micro = steps * self.layout.grad_accum * self.world - skipped
        elapsed = max(time.perf_counter() - start, 1e-9)
        record: dict[str, Any] = {"step": self.step}
        for i, k in enumerate(keys):
            record[k] = vec[i].item() / micro if micro else float("nan")
        record["nonfinite_losses"] = skipped
        record["lr"] = float(self.engine.get_lr()[0])
        record["consumed_samples"] = self.consumed
        record["tokens_per_s"] = vec[-2].item() / elapsed
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        scale = self._loss_scale()
        if scale is not None:
            record["loss_scale"] = scale
            record["skipped_steps"] = int(self.engine.skipped_steps)
        if self.device.type == "cuda":
            record["memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return record
