"""The training loop: the student in a DeepSpeed ZeRO engine, the teacher beside it, never inside.

:class:`Trainer` builds the engine from a :class:`~pipeline.run.plan.Plan` (every file already read and
checked by :func:`~pipeline.run.plan.prepare`), resumes it, and runs the loop of :meth:`Trainer.run`:
a step, a log when due, a validation when due, a checkpoint when due, a stop when the ranks agree.
Everything else is a named component: :class:`~pipeline.checkpoint.manager.CheckpointManager`,
the guards of :mod:`pipeline.run.guards`, :class:`~pipeline.run.metrics.LogWindow` and
:class:`~pipeline.run.metrics.RunLogger`, the teacher targets of :mod:`pipeline.model.targets`,
and the optional downstream probe of each validation (:mod:`pipeline.evaluation.probe`).
:meth:`Trainer.train_step` is the step itself, which ``pipeline.tools.bench`` times.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from data_prep.atomic import write_json
from pipeline.checkpoint.manager import CheckpointManager
from pipeline.checkpoint.save import SaveFailed
from pipeline.config.schema import Config, save_config
from pipeline.data.batch import to_device
from pipeline.data.loader import EvalBatches, MicroBatches, loader
from pipeline.data.masking import EVAL_MASKING, make_masker
from pipeline.data.sampling import BatchLayout
from pipeline.data.shards import ShardedDataset
from pipeline.distributed.comm import ControlGroup
from pipeline.distributed.failpoints import failpoint
from pipeline.distributed.launch import DistEnv
from pipeline.evaluation.mlm import SUMS, batch_sums, summarize
from pipeline.evaluation.probe import Probe, ProbeSplit, read_probe_examples
from pipeline.model.flops import device_peak_tflops, step_flops_per_token
from pipeline.model.masked_lm import Shape, count_parameters, teacher_dtype
from pipeline.model.objective import StudentWithLoss
from pipeline.model.selection import PRUNING_DIR, REPORT_FILE
from pipeline.model.targets import teacher_source
from pipeline.run.guards import LossScaleWatch, Preemption, nonfinite_loss
from pipeline.run.metrics import LogWindow, RunLogger, SampleLog
from pipeline.run.optim import build_optimizer, lr_lambda
from pipeline.run.plan import Plan

EXIT_NONFINITE = 3
EXIT_SAVE_FAILED = 4


class Engine(Protocol):
    """What the step needs of an engine: DeepSpeed's, or a plain one (the benchmark's baseline)."""

    def __call__(self, *args: Any) -> Any: ...
    def backward(self, loss: torch.Tensor) -> Any: ...
    def step(self) -> Any: ...


def _main_print(enabled: bool) -> Any:
    return (lambda msg: print(msg, flush=True)) if enabled else (lambda msg: None)


def peak_memory_gib(device: torch.device) -> float:
    """The peak memory of this rank: the GPU's allocated peak, or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def make_deterministic() -> None:
    """The same bits from run to run on a GPU as on a CPU: deterministic kernels (a warning, not
    an error, for an op that has none) and cuBLAS's fixed workspace."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        env: DistEnv,
        device: torch.device,
        plan: Plan,
        engine: Engine | None = None,
        control: ControlGroup | None = None,
    ) -> None:
        """Collective. ``engine``: a stand-in for the DeepSpeed engine (benchmark baselines)."""
        self.cfg, self.env, self.device, self.plan = cfg, env, device, plan
        self.run_dir = Path(plan.paths.output)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.control = control or ControlGroup(cfg.train.collective_timeout_s)
        manifest = plan.manifest
        self.pad_id = manifest.special_ids.pad
        first = plan.paths.sources[0].path
        self.train_ds = ShardedDataset(first, "train", manifest)
        has_valid = manifest.valid.num_sequences > 0
        self.valid_ds = ShardedDataset(first, "valid", manifest) if has_valid else None
        self.order = plan.corpus.order(cfg.train.seed)
        self.masker = make_masker(manifest, cfg.masking)
        # Validation scores plain BERT masking (no frequency smoothing), as pipeline.evaluate does.
        self.eval_masker = make_masker(manifest, EVAL_MASKING)
        es = plan.engine
        self.layout = BatchLayout(
            cfg.train.global_batch_size, es.micro_batch, es.grad_accum, self.world, self.rank
        )
        self.say = _main_print(self.rank == 0)
        self.record = {**cfg.to_dict(), "resolved": self._resolved()}
        self.checkpoints = CheckpointManager(
            self.run_dir,
            cfg.train,
            plan.identity,
            self.control,
            self.rank,
            self.say,
            self.record,
        )
        # Before anything is written into the run folder: a refusal changes nothing there.
        found = self.checkpoints.agree_resume(cfg.train.resume)
        probe_dir, main = cfg.train.probe, self.rank == 0
        examples: tuple[ProbeSplit, ProbeSplit] | None = None
        if probe_dir:  # rank 0 reads and checks the probe's examples; the others find its files
            n = cfg.train.probe_examples
            examples = self.control.together(lambda: read_probe_examples(Path(probe_dir), n, main))
        if main:
            self._write_run_files()
        self.control.barrier()
        self.probe = self.control.together(lambda: self._probe(examples)) if probe_dir else None
        self.teacher = plan.teacher
        if self.teacher is not None:
            self.teacher.to(device=device, dtype=teacher_dtype(cfg.model.teacher_dtype, device))
            if cfg.model.compile:
                self.teacher.compile_encoder()
        self.targets = teacher_source(
            self.teacher, cfg.loss, plan.alignment, cached=plan.teacher_cache is not None
        )
        module = StudentWithLoss(plan.student, cfg.loss, plan.alignment, cfg.distilling)
        if cfg.model.compile:
            plan.student.compile_encoder()
        if found is not None and found.world_size != self.world:
            plan.engine.config.setdefault("checkpoint", {})["load_universal"] = True
        self.optimizer: torch.optim.Optimizer | None = None
        self.engine: Any = engine if engine is not None else self._deepspeed(module)
        self.schedule = lr_lambda(plan.max_steps, cfg.optim.warmup_fraction)
        self.step, self.consumed = 0, 0
        if found is not None:
            self.step, self.consumed = self.checkpoints.resume(self.engine, found, self.world)
        self.window = LogWindow(device)
        self.flops_per_token = step_flops_per_token(
            manifest.seq_len,
            Shape.of(plan.student.config),
            Shape.of(self.teacher.config) if self.teacher is not None else None,
            int(plan.student.config.vocab_size),
            teacher_runs=self.teacher is not None,
        )
        self.peak_tflops = device_peak_tflops(device, cfg.train.peak_tflops)
        self.samples = (
            SampleLog(self.run_dir, self.rank, self.step) if cfg.train.sample_log else None
        )

    def _deepspeed(self, module: torch.nn.Module) -> Any:
        import deepspeed

        # No scheduler inside the engine: DeepSpeed does not step one on an fp16 overflow, while
        # the step and the data cursor advance. The learning rate is set before every step from
        # the step number alone (:meth:`train_step`): a skipped step uses its data and its place
        # in the schedule, and a resume finds the schedule where the run left it.
        self.optimizer = build_optimizer(module, self.cfg)
        engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=self.optimizer,
            config=self.plan.engine.config,
            dist_init_required=False,
        )
        # One owner of the fp16 decision: LossScaleWatch stops the run with its own line and
        # exit code; DeepSpeed's scaler would raise a bare Exception at its floor instead.
        scaler = getattr(engine.optimizer, "loss_scaler", None)
        if scaler is not None and hasattr(scaler, "raise_error_at_min_scale"):
            scaler.raise_error_at_min_scale = False
        return engine

    def _resolved(self) -> dict[str, Any]:
        """What the config left to the run: the batch layout, the engine, the models' files."""
        es = self.plan.engine
        resolved: dict[str, Any] = {
            "world_size": self.world,
            "micro_batch_size": es.micro_batch,
            "grad_accum": es.grad_accum,
            "precision": es.precision,
            "max_steps": self.plan.max_steps,
            "layer_map": self.plan.layer_map,
            "ds_config": es.config,
        }
        teacher = self.plan.models.teacher
        for role, ref in (("teacher", teacher), ("model", self.plan.models.model)):
            if ref is not None:
                resolved[role] = ref.to_json()
        return resolved

    def _write_run_files(self) -> None:
        from pipeline.publish.run_files import save_run_model_files

        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml", self.record["resolved"])
        teacher = self.plan.models.teacher
        if self.plan.pruning is not None:
            write_json(self.run_dir / PRUNING_DIR / REPORT_FILE, self.plan.pruning)
        save_run_model_files(
            self.run_dir, self.plan.student, self.plan.manifest, teacher.path if teacher else None
        )

    def _probe(self, examples: tuple[ProbeSplit, ProbeSplit] | None) -> Probe | None:
        """Rank 0's probe, tokenised once with the tokenizer saved in RUN_DIR/model."""
        if examples is None:
            return None
        from pipeline.publish.run_files import MODEL_DIR

        seq_len = self.plan.manifest.seq_len
        probe = Probe(*examples, self.run_dir / MODEL_DIR, seq_len, self.pad_id, self.device)
        self.say(f"probe: {self.cfg.train.probe}: {probe.describe()}")
        return probe

    # -- the step ----------------------------------------------------------------------------
    def train_batches(self, num_workers: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's micro-batches from the current position to the last step."""
        data = MicroBatches(
            self.train_ds,
            self.layout,
            self.masker,
            self.cfg.train.seed,
            self.consumed,
            self.plan.max_steps - self.step,
            self.pad_id,
            cache=self.plan.teacher_cache,
            order=self.order,
        )
        workers = self.cfg.data.num_workers if num_workers is None else num_workers
        return iter(loader(data, workers, self.device.type == "cuda"))

    def train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        """One optimizer step: ``grad_accum`` micro-batches through the engine, at the learning
        rate the schedule gives this step (whether or not an earlier step was skipped)."""
        if self.optimizer is not None:
            lr = self.cfg.optim.lr * self.schedule(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        for micro in range(self.layout.grad_accum):
            batch = next(batches)
            if self.samples is not None:
                self.samples.write(self.step + 1, micro, batch)
            b = to_device(batch, self.device, self.cfg.loss.ce_positions)
            targets = self.targets(b) if self.targets is not None else None
            loss, terms = self.engine(b, targets)
            failpoint("step")
            self.engine.backward(loss)
            self.engine.step()
            self.window.add(loss, terms, b.tokens)
        self.step += 1
        self.consumed += self.cfg.train.global_batch_size

    # -- the loop ----------------------------------------------------------------------------
    def run(self, preemption: Preemption | None = None) -> int:
        """Train to ``max_steps``; the exit code (0, ``EXIT_NONFINITE``, or the preemption code).

        ``preemption``: the handlers installed when the process started (pipeline.train does);
        a signal that came before the first step stops the run there, saving nothing new."""
        t, max_steps = self.cfg.train, self.plan.max_steps
        log = RunLogger(
            self.run_dir, self.rank == 0, max_steps, self.step, t.report_to, self.record
        )
        self._log_start(log)
        preemption = preemption or Preemption(t.preempt_signals)
        if preemption.agreed(self.control):
            who = preemption.signalled or "signal on another rank"
            return self._close(
                log,
                t.preempt_exit_code,
                f"preempted ({who}) before the first step; the newest checkpoint stays "
                f"{self.checkpoints.last_good()}; exiting with {t.preempt_exit_code}",
            )
        scale_watch = LossScaleWatch(self._min_loss_scale(), t.max_min_scale_steps)
        batches = self.train_batches()
        steps_here = 0
        if t.eval_on_start and self.step == 0:
            log.log_eval(0, self.evaluate())
        self.engine.train()
        while self.step < max_steps:
            self.train_step(batches)
            steps_here += 1
            end = self.step >= max_steps
            if self.step % t.log_every == 0 or end:
                record = self._log_record()
                if problem := nonfinite_loss(record, self.step, self._fp16):
                    return self._close(log, EXIT_NONFINITE, self._stopping(problem))
                log.log_step(record)
            if problem := scale_watch.check(self._loss_scale(), self._skipped_steps()):
                return self._close(log, EXIT_NONFINITE, self._stopping(problem))
            if (t.eval_every and self.step % t.eval_every == 0) or end:
                log.log_eval(self.step, self.evaluate())
            preempted = preemption.agreed(self.control)
            stop = preempted or bool(t.stop_after_steps and steps_here >= t.stop_after_steps)
            due = self.checkpoints.due(self.step, end or stop)
            try:
                problem = (
                    self.checkpoints.save(self.engine, self.step, self.consumed) if due else None
                )
            except SaveFailed as exc:
                return self._close(log, EXIT_SAVE_FAILED, self._save_failed(str(exc)))
            if problem:
                return self._close(log, EXIT_NONFINITE, self._stopping(problem))
            if preempted:
                who = preemption.signalled or "signal on another rank"
                return self._close(
                    log,
                    t.preempt_exit_code,
                    f"preempted ({who}): checkpoint at step {self.step}; exiting with {t.preempt_exit_code}",
                )
            if stop:
                break
        return self._close(log, 0)

    def _close(self, log: RunLogger, code: int, message: str | None = None) -> int:
        if message:
            log.info(message)
        log.close()
        if self.samples is not None:
            self.samples.close()
        return code

    def _stopping(self, problem: str) -> str:
        return (
            f"error: {problem}; stopping without saving. The last good checkpoint is "
            f"{self.checkpoints.last_good()}. Lower the lr, use bf16 (ds_configs/zero2_bf16.json) "
            "if this is an fp16 run, or check the data; then resume"
        )

    def _save_failed(self, problem: str) -> str:
        return (
            f"error: {problem}; stopping. The last good checkpoint is "
            f"{self.checkpoints.last_good()}. Make room or fix the file system, then run the same "
            "command again: it resumes from there"
        )

    def _log_start(self, log: RunLogger) -> None:
        cfg, t = self.cfg, self.cfg.train
        for note in self.plan.notes:
            log.info(f"note: {note}")
        what = "distilling a" if cfg.distilling else "MLM training of a"
        role = "student" if cfg.distilling else "model"
        source = f" from a {self.teacher.num_layers}-layer teacher" if self.teacher else ""
        if self.plan.corpus.blended:
            log.info(f"data: {self.plan.corpus.describe()}")
        log.info(
            f"{what} {count_parameters(self.plan.student):,}-parameter {role}{source} on "
            f"{self.world} rank(s) ({self.env.launcher}, {self.device.type}, "
            f"{self.plan.engine.precision}); global batch {t.global_batch_size} = "
            f"{self.layout.micro_batch} x {self.layout.grad_accum} x {self.world}; "
            f"steps {self.step} -> {self.plan.max_steps}"
        )

    # -- measurements -----------------------------------------------------------------------
    @property
    def _fp16(self) -> bool:
        return self.plan.engine.precision == "fp16"

    def _skipped_steps(self) -> int:
        return int(getattr(self.engine, "skipped_steps", 0)) if self._fp16 else 0

    def _min_loss_scale(self) -> float:
        return float(self.plan.engine.config.get("fp16", {}).get("min_loss_scale", 1))

    def _loss_scale(self) -> float | None:
        if not self._fp16:
            return None
        opt = self.engine.optimizer
        return float(getattr(opt, "loss_scale", getattr(opt, "cur_scale", 0.0)))

    def _log_record(self) -> dict[str, Any]:
        """The logged window, reduced over the ranks, with the engine's state."""
        record: dict[str, Any] = {"step": self.step, **self.window.reduce()}
        record["lr"] = float(self.engine.get_lr()[0])
        record["consumed_samples"] = self.consumed
        if self.plan.corpus.blended:
            names = [s.name for s in self.plan.paths.sources]
            record["consumed_per_source"] = dict(zip(names, self.order.consumed(self.consumed)))
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        scale = self._loss_scale()
        if scale is not None:
            record["loss_scale"] = scale
            record["skipped_steps"] = int(self.engine.skipped_steps)
        if self.peak_tflops:
            achieved = record["tokens_per_s"] * self.flops_per_token / self.world
            record["mfu"] = achieved / (self.peak_tflops * 1e12)
        record["memory_gib"] = peak_memory_gib(self.device)
        return record

    def evaluate(self) -> dict[str, float]:
        """Validation (collective): the held-out MLM measures, and the probe's when
        ``train.probe`` is set; the same dict on every rank."""
        metrics = self._mlm_metrics()
        if self.cfg.train.probe:
            student = self.engine.module.student
            # Rank 0 alone runs the probe (the weights are whole on every rank under ZeRO-2);
            # the others wait for its metrics in the same two collectives.
            local = self.control.together(
                lambda: self.probe.run(student) if self.probe is not None else None
            )
            probed: dict[str, float] | None = self.control.broadcast(local)
            metrics.update(probed or {})
        return metrics

    @torch.no_grad()
    def _mlm_metrics(self) -> dict[str, float]:
        """Masked-LM measures on ``train.eval_samples`` held-out sequences (collective)."""
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
        # A teacher without its MLM head (an encoder distilled for its hidden states or attention
        # only) has no predictions to compare with.
        teacher = self.teacher if self.teacher is not None and self.teacher.has_head else None
        sums = torch.zeros(len(SUMS), dtype=torch.float64)
        for batch in loader(data, 0, False):
            sums += batch_sums(student, teacher, batch, self.device)
        student.train()
        return summarize(self.control.reduce(sums), teacher is not None)
