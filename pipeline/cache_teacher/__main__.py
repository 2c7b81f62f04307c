"""Run the teacher once over the training data and cache its logits at the masked positions.

    python -m pipeline.cache_teacher --data DATA_DIR --teacher TEACHER_DIR --output CACHE_DIR \\
        --top-k K [--views V] [--values fp16|fp32]          # top-k log-probs (default mode)
    python -m pipeline.cache_teacher ... --mode sample --samples N [--views V]   # RS-KD sampling

The masks are the trainer's (``--config RECIPE`` and the training-config flags ``--train.seed``,
``--masking.*``, ``--loss.temperature`` must give the training run's; the trainer checks them).
For every train sequence and every view ``v < V`` the teacher (fp16 on a GPU, fp32 or bf16 on a
CPU, ``--model.teacher_dtype``) scores the masked positions only, and the cache keeps K ids and
values per position: see :mod:`pipeline.cache_teacher.format` for the format.

Parallel: under torchrun / srun / mpirun / the deepspeed launcher, rank r of W takes train shards
r, r+W, ...; the bytes written never depend on W. Restartable: each shard is written under
temporary names, renamed, then marked done (``P.done.json``); a rerun skips done shards. Before
any work it prints the size it will write and refuses to start when the disk cannot hold it.
When every shard is done, rank 0 writes ``CACHE_DIR/manifest.json`` (``--finalize`` does only
that, e.g. after shards were computed by separate jobs).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist

from data_prep.errors import UserError, cli_main
from data_prep.hub import resolve_ref
from data_prep.progress import Progress
from pipeline.cache_teacher import format as tc
from pipeline.cache_teacher.job import (
    Job,
    build_parser,
    check_plan,
    free_bytes,
    human_bytes,
    planned_bytes,
    planned_rows,
    resolve,
)
from pipeline.cache_teacher.writer import finalize, process_shard
from pipeline.data.masking import make_masker
from pipeline.distributed.comm import ControlGroup, device_for, init_process_group
from pipeline.distributed.launch import detect, quiet_libraries
from pipeline.model.masked_lm import DTYPES, load_teacher

# Ranks wait for the slowest at the end (shards are hours of work on big corpora): the final
# all-reduce must outlast any job time limit, which is what ends a job whose rank was killed.
BARRIER_TIMEOUT_S = 7 * 24 * 3600


def _check_room(job: Job, todo: list[int], rows: int, group: ControlGroup, main: bool) -> None:
    """Print what the job will write (rank 0) and refuse a disk that cannot hold it (every rank)."""
    views = int(job.settings["num_views"])
    need = planned_bytes(job, todo, rows)
    my_tokens = sum(job.shards[i].num_tokens for i in todo)
    sums = group.reduce(torch.tensor([need, len(todo), my_tokens], dtype=torch.float64))
    total_need, total_todo, total_tokens = sums.tolist()
    min_free = group.reduce(torch.tensor([free_bytes(job.out)], dtype=torch.float64), "MIN").item()
    if main:
        s, train = job.settings, job.manifest.train
        what = (
            f"top-{s['k']} ({s['id_dtype']} ids, {s['value_dtype']} log-probs)"
            if s["mode"] == "topk"
            else f"{s['k']} samples ({s['id_dtype']} ids, {s['value_dtype']} counts)"
        )
        done = len(job.shards) - int(total_todo)
        per_token = (
            f"{total_need / views / total_tokens:.2f} B per token per view; "
            if total_tokens
            else ""
        )
        print(
            f"cache_teacher: {train.num_sequences:,} sequences in {len(job.shards)} shard(s), "
            f"{views} view(s), {what}: {tc.row_bytes(s)} B per masked position, {per_token}"
            f"to write: {human_bytes(total_need)} for {int(total_todo)} shard(s)"
            + (f" ({done} already done)" if done else "")
            + f" on {group.world} rank(s); free: {human_bytes(min_free)}",
            flush=True,
        )
    if total_need > min_free:
        raise UserError(
            f"{job.out}: the cache needs {human_bytes(total_need)} but only {human_bytes(min_free)} "
            "is free there; free space, pick another --output, or lower --top-k / --samples / --views"
        )


def _write_shards(
    job: Job, todo: list[int], rows: int, device: torch.device, label: str, quiet: bool
) -> None:
    """This rank's shards, one after the other (the teacher loaded once)."""
    if not todo:
        return
    masker = make_masker(job.manifest, job.masking)
    teacher = load_teacher(str(job.teacher.path), job.attn, need_head=True)
    teacher.to(device=device, dtype=DTYPES[job.dtype])
    starts = np.concatenate([[0], np.cumsum([sh.num_sequences for sh in job.shards])])
    total = int(job.settings["num_views"]) * rows * tc.row_bytes(job.settings)
    progress = Progress(label, total_bytes=total, enabled=not quiet)
    for i in todo:
        process_shard(job, teacher, masker, device, i, int(starts[i]), progress)
    progress.close()


def _report(job: Job, manifest: tc.CacheManifest) -> None:
    t = manifest.totals
    covered = (
        f"the top-{job.settings['k']} ids hold {t['mean_covered']:.1%} of the teacher's mass at "
        f"T={job.temperature} on average"
        if job.settings["mode"] == "topk"
        else f"{t['mean_covered']:.1f} distinct ids per position on average"
    )
    print(
        f"wrote {job.out / tc.MANIFEST_NAME}: {human_bytes(t['bytes'])}, "
        f"{t['bytes_per_token']:.2f} B per token ({job.settings['num_views']} view(s)), rows per "
        f"view {t['rows_per_view']}; {covered}",
        flush=True,
    )


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    env = detect()
    device = device_for(env)
    # A caller that already runs a process group (a benchmark calling main()) keeps it.
    own_group = env.world_size > 1 and not dist.is_initialized()
    if own_group:
        init_process_group(env, device)  # the default timeout: a rank that never came is an error
    # gloo (no GPU sync), with a timeout that outlasts the slowest rank's shards
    group = ControlGroup(timeout_s=BARRIER_TIMEOUT_S)
    # A hub ID is resolved once, by rank 0: one snapshot for every rank, no burst of hub calls.
    teacher = group.broadcast(
        group.together(
            lambda: resolve_ref(args.teacher, "--teacher") if env.is_main and args.teacher else None
        )
    )
    job = group.together(lambda: resolve(args, device, teacher))
    if args.finalize:
        check_plan(job)
        manifest = finalize(job)
        print(f"wrote {job.out / tc.MANIFEST_NAME}: {human_bytes(manifest.totals['bytes'])}")
        return
    resumed = check_plan(job)
    mine = range(env.rank, len(job.shards), env.world_size)
    todo = [i for i in mine if not job.restartable.done(job.shards[i].path)]
    rows = group.together(lambda: planned_rows(job, todo))
    _check_room(job, todo, rows, group, env.is_main)
    write_plan = env.is_main and not resumed
    group.together(lambda: job.restartable.write_plan(job.plan()) if write_plan else None)
    label = "cache_teacher" if env.world_size == 1 else f"cache_teacher[rank {env.rank}]"
    # together(): also the barrier before rank 0 writes the manifest
    group.together(lambda: _write_shards(job, todo, rows, device, label, args.quiet))
    if env.is_main:
        _report(job, finalize(job, wait_s=120.0 if env.world_size > 1 else 0.0))
    if own_group:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
