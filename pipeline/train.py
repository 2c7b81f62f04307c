"""Entry point: ``python -m pipeline.train [--config RECIPE] --teacher T --data D --output R ...``.

Runs under torchrun, ``deepspeed --num_gpus N --module pipeline.train``, ``srun`` and ``mpirun``
(see :mod:`pipeline.distributed.launch`). The configuration is checked first (``--help`` documents every
field), then the process group starts, rank 0 resolves hub IDs once for every rank, every rank reads
and checks every file (:func:`pipeline.run.plan.prepare`; a failure on any rank stops all of them
with one line), then the run (:class:`pipeline.run.trainer.Trainer`). Exit codes: 0 done (or
stopped by ``train.stop_after_steps``), 2 bad input, 3 non-finite loss or weights, 4 a checkpoint
could not be written (a full disk: nothing committed is lost; make room and rerun),
``train.preempt_exit_code`` (42) preempted with a checkpoint (or by a signal before the first
step, the checkpoint it resumed from staying the newest), 1 an unexpected error (its traceback;
the process exits at once rather than wait on data-loader workers or peers).

``--train.dry_run``: plan only. Everything above runs up to the plan, at the world size of the
launcher it runs under (``python -m pipeline.train`` is one rank; run it under the job's
torchrun/srun to check that job's batch split): the config, the data manifest and shards, the
teacher and its family, the student's shape, the objectives against both, the DeepSpeed config
and the batch split; then the checkpoint a resume would take is found and checked read-only, rank
0 prints a summary (models and parameters, layer map, losses, data, batch micro x accum x world,
max_steps, precision, run folder, resume) and the process exits 0 (2 on a failed check), without
writing anything into the run folder or starting the DeepSpeed engine
(:mod:`pipeline.run.dry_run`).
"""

from __future__ import annotations

import os
import sys
import traceback

from pipeline.config.schema import TrainConfig
from pipeline.run.guards import Preemption


def main(argv: list[str] | None = None) -> int:
    # First of all: from here on, a preemption signal is a request to stop, not a kill.
    preemption = Preemption(TrainConfig().preempt_signals)
    try:
        return _main(argv, preemption)
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _main(argv: list[str] | None, preemption: Preemption) -> int:
    from data_prep.errors import UserError, error_line
    from pipeline.distributed.launch import quiet_libraries

    quiet_libraries()
    args = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher appends --local_rank=N; ranks come from the environment instead.
    args = [a for a in args if not a.startswith(("--local_rank", "--local-rank"))]
    try:
        from pipeline.config.cli import parse_config
        from pipeline.distributed.comm import ControlGroup, device_for, init_process_group
        from pipeline.distributed.launch import detect
        from pipeline.run.calibration import calibrate
        from pipeline.run.dry_run import dry_run, importance_read_only
        from pipeline.run.plan import prepare, resolve_models
        from pipeline.run.trainer import Trainer, make_deterministic

        cfg, paths = parse_config(args)
        preemption.install(cfg.train.preempt_signals)
        if cfg.train.deterministic:
            make_deterministic()
        env = detect()
        device = device_for(env)
        timeout = cfg.train.collective_timeout_s
        init_process_group(env, device, timeout)
        control = ControlGroup(timeout)
        # Hub IDs are resolved once, by rank 0: one snapshot (one revision) for every rank, and
        # no burst of N hub calls; then every rank checks every input, and all stop together.
        resolved = control.together(lambda: resolve_models(cfg) if env.rank == 0 else None)
        models = control.broadcast(resolved)
        assert models is not None
        # init prune: rank 0 measures (or reuses) the teacher's importance; every rank builds
        # its student from those same scores. A dry run keeps them in memory.
        measure = importance_read_only if cfg.train.dry_run else calibrate
        measured = control.together(
            lambda: measure(cfg, paths, models, device) if env.rank == 0 else None
        )
        calibration = control.broadcast(measured)
        importance = calibration[0] if calibration else None
        plan = control.together(lambda: prepare(cfg, paths, models, env, device, importance))
        if calibration:
            plan.notes.insert(0, calibration[1])
        if cfg.train.dry_run:  # before the Trainer: it writes the run files and builds the engine
            code = dry_run(cfg, env, device, plan, control)
        else:
            code = Trainer(cfg, env, device, plan, control=control).run(preemption)
    except UserError as exc:
        error_line(f"pipeline.train: error: {exc}")
        # Leave now: a data-loader worker or a peer waiting in a collective must not keep this
        # process alive (its error is said; the others stop on their own lines or timeouts).
        sys.stdout.flush()
        os._exit(2)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
