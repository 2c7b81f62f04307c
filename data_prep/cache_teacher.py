"""Run the teacher once over the training data and cache its logits at the masked positions.

    python -m data_prep.cache_teacher --data DATA_DIR --teacher TEACHER_DIR --out CACHE_DIR \\
        --top-k K [--views V] [--values fp16|fp32]          # top-k log-probs (default mode)
    python -m data_prep.cache_teacher ... --mode sample --samples N [--views V]   # RS-KD sampling

The masks are the trainer's (``--seed``, the masking flags or ``--config RECIPE`` must be the
training run's; the trainer checks them). For every train sequence and every view ``v < V`` the
teacher (fp16 on a GPU, fp32 or bf16 on a CPU, ``--dtype``) scores the masked positions only, and
the cache keeps K ids and values per position: see :mod:`pipeline.teacher_cache` for the format.

Parallel: under torchrun / srun / mpirun / the deepspeed launcher, rank r of W takes train shards
r, r+W, ...; the bytes written never depend on W. Restartable: each shard is written under
temporary names, renamed, then marked done (``P.done.json``); a rerun skips done shards. Before
any work it prints the size it will write and refuses to start when the disk cannot hold it.
When every shard is done, rank 0 writes ``CACHE_DIR/manifest.json`` (``--finalize`` does only
that, e.g. after shards were computed by separate jobs).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from data_prep.atomic import fsync_dir, tmp_name, write_json
from data_prep.errors import UserError, cli_main
from data_prep.indexed import IndexedReader
from data_prep.manifest import load_manifest
from data_prep.progress import Progress
from pipeline import teacher_cache as tc
from pipeline.masking import IGNORE_INDEX, Masker, MaskingSpec

T = TypeVar("T")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Ranks wait for the slowest at the end (shards are hours of work on big corpora): the final
# all-reduce must outlast any job time limit, which is what ends a job whose rank was killed.
BARRIER_TIMEOUT_S = 7 * 24 * 3600


# --- settings ---------------------------------------------------------------------------------
@dataclass
class Job:
    """Everything resolved from the command line and the inputs, identical on every rank."""

    data_dir: Path
    teacher_dir: Path
    out: Path
    manifest: dict[str, Any]
    spec: MaskingSpec
    seed: int
    temperature: float
    settings: dict[str, Any]  # mode, k, samples, num_views, id/value dtype, teacher vocab/dtype
    ident: dict[str, Any]
    teacher_files: dict[str, str]
    batch_size: int
    attn: str
    dtype: str

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.manifest["splits"]["train"]["shards"])

    def plan(self) -> dict[str, Any]:
        """What a restart must agree with (plan.json), and the head of manifest.json."""
        return {
            "format": tc.FORMAT,
            "format_version": tc.FORMAT_VERSION,
            "identity": self.ident,
            "settings": self.settings,
            "sources": {
                "data": str(self.data_dir.resolve()),
                "teacher": str(self.teacher_dir.resolve()),
                "teacher_files": self.teacher_files,
            },
        }


def build_parser() -> argparse.ArgumentParser:
    from pipeline.config import LossConfig, MaskingConfig, TrainConfig

    m, loss, train = MaskingConfig(), LossConfig(), TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m data_prep.cache_teacher", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", help="DATA_DIR written by data_prep.build_shards")
    p.add_argument("--teacher", help="the teacher: a Hugging Face masked-LM folder")
    p.add_argument("--out", required=True, help="CACHE_DIR")
    p.add_argument(
        "--mode", choices=tc.MODES, default="topk", help="topk (default) or sample (RS-KD)"
    )
    p.add_argument("--top-k", type=int, help="top-k mode: tokens kept per masked position")
    p.add_argument(
        "--samples", type=int, help="sample mode: draws per masked position (slots kept)"
    )
    p.add_argument("--views", type=int, default=1, help="mask views V; epoch e uses view e mod V")
    p.add_argument(
        "--values", choices=tuple(tc.VALUE_DTYPES), default="fp16", help="top-k log-prob storage"
    )
    p.add_argument("--config", help="training recipe YAML: seed, temperature and masking from it")
    p.add_argument("--seed", type=int, help=f"the training run's train.seed (default {train.seed})")
    p.add_argument(
        "--temperature", type=float, help=f"loss.temperature T (default {loss.temperature})"
    )
    for name in ("mlm_probability", "mask_fraction", "random_fraction", "smoothing"):
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=float,
            help=f"masking.{name} (default {getattr(m, name)})",
        )
    p.add_argument("--batch-size", type=int, default=64, help="sequences per teacher forward")
    p.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="teacher dtype; auto: fp16 on GPU, fp32 on CPU",
    )
    p.add_argument("--attn", default="sdpa", help="attention implementation of the teacher")
    p.add_argument(
        "--finalize",
        action="store_true",
        help="only check every shard is done and write manifest.json (pass the same arguments)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _run_settings(args: argparse.Namespace) -> tuple[int, float, dict[str, float]]:
    """(seed, temperature, masking) from the defaults, then --config, then the flags."""
    from pipeline.config import Config, apply_overrides, load_recipe

    cfg = Config()
    if args.config:
        recipe = load_recipe(args.config)
        apply_overrides(
            cfg, {k: v for k, v in recipe.items() if k in ("loss", "masking", "train")}, args.config
        )
    seed = cfg.train.seed if args.seed is None else args.seed
    temperature = cfg.loss.temperature if args.temperature is None else args.temperature
    masking = {
        name: getattr(cfg.masking, name) if getattr(args, name) is None else getattr(args, name)
        for name in ("mlm_probability", "mask_fraction", "random_fraction", "smoothing")
    }
    return seed, temperature, masking


def resolve(args: argparse.Namespace, device: torch.device) -> Job:
    """Check the inputs and settings; every problem is one UserError, the same on every rank."""
    from data_prep.tokenizers import check_model_tokenizer
    from pipeline.data import masking_spec

    if not args.data or not args.teacher:
        raise UserError("--data and --teacher are required")
    data_dir, teacher_dir = Path(args.data), Path(args.teacher)
    manifest = load_manifest(data_dir)
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
    seed, temperature, masking = _run_settings(args)
    if temperature <= 0:
        raise UserError("--temperature must be positive")
    if (
        not 0 < masking["mlm_probability"] < 1
        or masking["mask_fraction"] + masking["random_fraction"] > 1
    ):
        raise UserError(
            "masking: need 0 < mlm_probability < 1 and mask_fraction + random_fraction <= 1"
        )
    if not (teacher_dir / "config.json").is_file():
        raise UserError(f"{teacher_dir}: not a Hugging Face model folder (no config.json)")
    check_model_tokenizer(teacher_dir, manifest, data_dir)
    import json

    teacher_vocab = int(json.loads((teacher_dir / "config.json").read_text()).get("vocab_size", 0))
    if teacher_vocab < int(manifest["vocab_size"]):
        raise UserError(
            f"{teacher_dir}: vocabulary of {teacher_vocab} is smaller than the data's {manifest['vocab_size']}"
        )
    if k > teacher_vocab:
        raise UserError(f"--top-k {k} is more than the teacher's vocabulary of {teacher_vocab}")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "fp16" if device.type == "cuda" else "fp32"
    if dtype == "fp16" and device.type != "cuda":
        raise UserError("--dtype fp16 does not run on a CPU; use bf16 or fp32 (or auto)")
    spec = masking_spec(
        manifest,
        masking["mlm_probability"],
        masking["mask_fraction"],
        masking["random_fraction"],
        masking["smoothing"],
    )
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
        data_dir=data_dir,
        teacher_dir=teacher_dir,
        out=Path(args.out),
        manifest=manifest,
        spec=spec,
        seed=seed,
        temperature=temperature,
        settings=settings,
        ident=tc.identity(teacher_fp["fingerprint"], data_dir, manifest, spec, seed, temperature),
        teacher_files=teacher_fp["files"],
        batch_size=args.batch_size,
        attn=args.attn,
        dtype=dtype,
    )


def check_plan(job: Job) -> bool:
    """True when CACHE_DIR/plan.json exists; refuse one written with other settings."""
    import json

    path = job.out / tc.PLAN_NAME
    if not path.is_file():
        return False
    old = json.loads(path.read_text())
    diffs = tc.identity_differences(old.get("identity", {}), job.ident)
    for key, value in job.settings.items():
        if old.get("settings", {}).get(key) != value:
            diffs.append(f"{key} (started with {old.get('settings', {}).get(key)}, now {value})")
    if diffs:
        raise UserError(
            f"{job.out} holds a cache job started with other settings; differs: {'; '.join(diffs)}. "
            "Finish it with its settings, or write the new cache to another --out"
        )
    return True


# --- the work of one shard --------------------------------------------------------------------
class _ViewWriter:
    """The three files of one (shard, view), streamed under temporary names."""

    def __init__(self, out: Path, shard_path: str, view: int) -> None:
        self.final = {kind: tc.shard_file(out, shard_path, view, kind) for kind in tc.FILE_KINDS}
        self.tmp = {kind: tmp_name(path) for kind, path in self.final.items()}
        self.final["ids"].parent.mkdir(parents=True, exist_ok=True)
        self.fh: dict[str, IO[bytes]] = {k: open(self.tmp[k], "wb") for k in ("ids", "val")}  # noqa: SIM115
        self.sha = {kind: hashlib.sha256() for kind in tc.FILE_KINDS}
        self.size = dict.fromkeys(tc.FILE_KINDS, 0)
        self.offsets = [0]

    def add(self, ids: np.ndarray, values: np.ndarray, per_sequence: list[int]) -> int:
        written = 0
        for kind, arr in (("ids", ids), ("val", values)):
            data = np.ascontiguousarray(arr).tobytes()
            self.fh[kind].write(data)
            self.sha[kind].update(data)
            self.size[kind] += len(data)
            written += len(data)
        for n in per_sequence:
            self.offsets.append(self.offsets[-1] + n)
        return written

    def close(self) -> dict[str, Any]:
        """Write the offsets, fsync everything; the files stay under their temporary names."""
        data = np.asarray(self.offsets, dtype=tc.OFFSET_DTYPE).tobytes()
        with open(self.tmp["off"], "wb") as off:
            off.write(data)
            off.flush()
            os.fsync(off.fileno())
        self.sha["off"].update(data)
        self.size["off"] = len(data)
        for fh in self.fh.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        return {
            "rows": self.offsets[-1],
            "files": {
                k: {"bytes": self.size[k], "sha256": self.sha[k].hexdigest()} for k in tc.FILE_KINDS
            },
        }

    def commit(self) -> None:
        for kind in tc.FILE_KINDS:
            os.replace(self.tmp[kind], self.final[kind])

    def abort(self) -> None:
        for fh in self.fh.values():
            fh.close()
        for path in self.tmp.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def shard_done(out: Path, shard: dict[str, Any], views: int) -> bool:
    """The marker exists and every file it names is there with its size."""
    import json

    marker = tc.done_marker(out, shard["path"])
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    if info.get("num_sequences") != shard["num_sequences"] or len(info.get("views", [])) != views:
        return False
    for v, view in enumerate(info["views"]):
        for kind, f in view["files"].items():
            path = tc.shard_file(out, shard["path"], v, kind)
            if not path.is_file() or path.stat().st_size != f["bytes"]:
                return False
    return True


def remove_stale_temporaries(out: Path, shard_path: str) -> None:
    """Temporaries of a killed earlier attempt at this shard (any pid)."""
    prefix = tc.done_marker(out, shard_path).name[: -len(".done.json")]
    folder = (out / shard_path).parent
    if folder.is_dir():
        for p in folder.glob(f".{prefix}.*.tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def sample_rows(
    logp: torch.Tensor, n: int, seed: int, view: int, indices: list[int], per_sequence: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """N draws from exp(logp) per row -> (distinct ids ascending, counts), padded to N slots.

    The uniforms come from numpy, keyed by (seed, view, sample index), so they do not depend on
    the batch, the rank or the device; the inverse-CDF search runs where the logits are.
    """
    u = np.concatenate(
        [
            np.sort(
                np.random.Generator(np.random.PCG64([seed, view, index, tc.SAMPLE_SALT])).random(
                    (r, n)
                ),
                axis=1,
            )
            for index, r in zip(indices, per_sequence)
            if r
        ]
    )
    cdf = torch.cumsum(logp.exp(), dim=-1)
    ut = torch.from_numpy(u).to(device=logp.device, dtype=cdf.dtype) * cdf[:, -1:]
    draws = torch.searchsorted(cdf, ut.contiguous(), right=True).clamp_max(logp.shape[-1] - 1)
    d = draws.cpu().numpy().astype(np.int64)  # sorted along each row: u sorted, cdf monotone
    rows = np.arange(d.shape[0])[:, None]
    new = np.ones(d.shape, dtype=bool)
    new[:, 1:] = d[:, 1:] != d[:, :-1]
    slot = np.cumsum(new, axis=1) - 1
    ids = np.repeat(d[:, :1], n, axis=1)
    ids[rows, slot] = d
    counts = np.zeros(d.shape, dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(rows, d.shape), slot), 1)
    return ids, counts


def process_shard(
    job: Job,
    teacher: Any,
    masker: Masker,
    device: torch.device,
    shard_no: int,
    start_index: int,
    progress: Progress,
) -> None:
    """Every view of one shard: written, renamed into place, then marked done."""
    from pipeline.data import collate
    from pipeline.losses import scored_rows, take_rows

    shard = job.shards[shard_no]
    path = shard["path"]
    remove_stale_temporaries(job.out, path)
    reader = IndexedReader(job.data_dir / path)
    if len(reader) != shard["num_sequences"]:
        raise UserError(
            f"{job.data_dir / path}.idx: {len(reader)} sequences, the manifest says {shard['num_sequences']}; run python -m data_prep.verify {job.data_dir}"
        )
    expected = tc.masked_counts(reader, job.spec)
    pad_id = int(job.manifest["special_ids"]["pad"])
    s = job.settings
    k, n_views = int(s["k"]), int(s["num_views"])
    id_dt, val_dt = np.dtype(s["id_dtype"]), np.dtype(s["value_dtype"])
    writers: list[_ViewWriter] = []
    views: list[dict[str, Any]] = []
    try:
        for v in range(n_views):
            w = _ViewWriter(job.out, path, v)
            writers.append(w)
            covered = (
                0.0  # top-k: teacher mass inside the K ids; sample: distinct ids, summed over rows
            )
            progress.note = f"shard {path} view {v}"
            for lo in range(0, len(reader), job.batch_size):
                hi = min(len(reader), lo + job.batch_size)
                indices = list(range(start_index + lo, start_index + hi))
                seqs = [reader[i] for i in range(lo, hi)]
                batch = collate(seqs, indices, [v] * len(seqs), masker, job.seed, pad_id)
                labels, attn_cpu = batch["labels"], batch["attention_mask"]
                per_seq = (labels != IGNORE_INDEX).sum(1).tolist()
                if per_seq != expected[lo:hi].tolist():
                    raise RuntimeError(
                        f"{path}: masked counts differ from tc.masked_counts: the masking rule changed"
                    )
                rows = scored_rows(labels, attn_cpu, "masked")
                if rows.numel() == 0:
                    w.add(np.zeros((0, k), id_dt), np.zeros((0, k), val_dt), per_seq)
                    continue
                attn = None if bool(attn_cpu.all()) else attn_cpu.to(device)
                with torch.inference_mode():
                    last, _ = teacher.encode(batch["input_ids"].to(device), attn)
                    logits = teacher.head(take_rows(last, rows.to(device)))
                    logp = torch.log_softmax(logits.float() / job.temperature, dim=-1)
                    if s["mode"] == "topk":
                        top = torch.topk(logp, k, dim=-1)
                        ids = top.indices.cpu().numpy()
                        values = top.values.cpu().numpy()
                        covered += float(top.values.exp().sum().double())
                    else:
                        ids, values = sample_rows(logp, k, job.seed, v, indices, per_seq)
                        covered += float(np.count_nonzero(values))
                nbytes = w.add(ids.astype(id_dt), values.astype(val_dt), per_seq)
                progress.update(nbytes=nbytes, tokens=int(attn_cpu.sum()), items=len(seqs))
            views.append({**w.close(), "covered": covered})
        for w in writers:
            w.commit()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    fsync_dir(tc.done_marker(job.out, path).parent)
    write_json(
        tc.done_marker(job.out, path),
        {
            "path": path,
            "num_sequences": len(reader),
            "num_tokens": reader.num_tokens,
            "views": views,
        },
    )


# --- sizes ------------------------------------------------------------------------------------
def planned_rows(job: Job, shard_nos: list[int]) -> int:
    """Masked positions of these shards (one view), counted exactly from their tokens."""
    return sum(
        int(tc.masked_counts(IndexedReader(job.data_dir / job.shards[i]["path"]), job.spec).sum())
        for i in shard_nos
    )


def planned_bytes(job: Job, shard_nos: list[int], rows: int) -> int:
    views = int(job.settings["num_views"])
    offsets = sum(job.shards[i]["num_sequences"] + 1 for i in shard_nos) * tc.OFFSET_DTYPE.itemsize
    return views * (rows * tc.row_bytes(job.settings) + offsets)


def _free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


def _gb(n: float) -> str:
    return f"{n / 1e9:,.3f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"


# --- finalize ---------------------------------------------------------------------------------
def finalize(job: Job, wait_s: float = 0.0) -> dict[str, Any]:
    """Check every shard is done and write CACHE_DIR/manifest.json (atomically).

    ``wait_s``: how long to wait for markers other nodes wrote to become visible here (network
    file systems cache lookups for a few seconds).
    """
    import json
    import time

    views = int(job.settings["num_views"])
    deadline = time.monotonic() + wait_s
    while True:
        missing = [sh["path"] for sh in job.shards if not shard_done(job.out, sh, views)]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(2.0)
    if missing:
        raise UserError(
            f"{job.out}: {len(missing)} of {len(job.shards)} shard(s) not done ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); rerun the same cache_teacher command (done shards are kept)"
        )
    shards = []
    for sh in job.shards:
        info = json.loads(tc.done_marker(job.out, sh["path"]).read_text())
        shards.append(info)
    rows = [sum(int(s["views"][v]["rows"]) for s in shards) for v in range(views)]
    total = sum(f["bytes"] for s in shards for view in s["views"] for f in view["files"].values())
    tokens = sum(int(s["num_tokens"]) for s in shards)
    manifest = {
        **job.plan(),
        "shards": shards,
        "totals": {
            "num_sequences": sum(int(s["num_sequences"]) for s in shards),
            "num_tokens": tokens,
            "rows_per_view": rows,
            "bytes": total,
            "bytes_per_masked_position": tc.row_bytes(job.settings),
            "bytes_per_token": total / max(tokens, 1),
            # top-k: mean teacher probability mass (at T) inside the K ids; sample: mean distinct ids
            "mean_covered": sum(v["covered"] for s in shards for v in s["views"])
            / max(sum(rows), 1),
        },
    }
    write_json(job.out / tc.MANIFEST_NAME, manifest)
    return manifest


# --- main -------------------------------------------------------------------------------------
def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


class _Group:
    """The few collectives of the job; a no-op world of one without a process group."""

    def __init__(self, world: int) -> None:
        self.dist = dist if world > 1 else None
        # gloo (no GPU sync) with a timeout that outlasts the slowest rank's shards
        self.group = (
            dist.new_group(backend="gloo", timeout=timedelta(seconds=BARRIER_TIMEOUT_S))
            if world > 1
            else None
        )

    def reduce(self, values: list[float], op: str) -> list[float]:
        if self.dist is None:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        self.dist.all_reduce(t, op=getattr(self.dist.ReduceOp, op), group=self.group)
        return [float(x) for x in t.tolist()]

    def together(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank, then agree: if it raised on any rank, every rank stops
        (the failing one with its own error), instead of the others waiting for it forever."""
        failed: BaseException | None = None
        result: T | None = None
        try:
            result = fn()
        except BaseException as exc:
            failed = exc
        (any_failed,) = self.reduce([0.0 if failed is None else 1.0], "MAX")
        if failed is not None:
            raise failed
        if any_failed:
            raise UserError(
                "another rank failed (its error is in the log); rerun the same command: done shards are kept"
            )
        return result  # type: ignore[return-value]


@cli_main
def main(argv: list[str] | None = None) -> None:
    from pipeline.data import make_masker
    from pipeline.dist import detect, device_for, init_process_group

    args = build_parser().parse_args(argv)
    _quiet_libraries()
    env = detect()
    device = device_for(env)
    job = resolve(args, device)
    if args.finalize:
        check_plan(job)
        manifest = finalize(job)
        print(f"wrote {job.out / tc.MANIFEST_NAME}: {_gb(manifest['totals']['bytes'])}")
        return
    resumed = check_plan(job)
    views = int(job.settings["num_views"])
    mine = [i for i in range(env.rank, len(job.shards), env.world_size)]
    todo = [i for i in mine if not shard_done(job.out, job.shards[i], views)]
    # A caller that already runs a process group (a benchmark calling main()) keeps it.
    own_group = env.world_size > 1 and not dist.is_initialized()
    if own_group:
        init_process_group(env, device)  # the default timeout: a rank that never came is an error
    group = _Group(env.world_size)
    rows = group.together(lambda: planned_rows(job, todo))
    need = planned_bytes(job, todo, rows)
    my_tokens = sum(int(job.shards[i]["num_tokens"]) for i in todo)
    total_need, total_todo, total_tokens = group.reduce([need, len(todo), my_tokens], "SUM")
    (min_free,) = group.reduce([_free_bytes(job.out)], "MIN")
    if env.is_main:
        s, train = job.settings, job.manifest["splits"]["train"]
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
            f"cache_teacher: {train['num_sequences']:,} sequences in {len(job.shards)} shard(s), "
            f"{views} view(s), {what}: {tc.row_bytes(s)} B per masked position, {per_token}"
            f"to write: {_gb(total_need)} for {int(total_todo)} shard(s)"
            + (f" ({done} already done)" if done else "")
            + f" on {env.world_size} rank(s); free: {_gb(min_free)}",
            flush=True,
        )
    if total_need > min_free:
        raise UserError(
            f"{job.out}: the cache needs {_gb(total_need)} but only {_gb(min_free)} is free there; "
            "free space, pick another --out, or lower --top-k / --samples / --views"
        )
    if env.is_main and not resumed:
        group.together(lambda: write_json(job.out / tc.PLAN_NAME, job.plan()))
    else:
        group.together(lambda: None)

    def work() -> None:
        if todo:
            from pipeline.models import load_teacher

            masker = make_masker(job.manifest, job.spec)
            teacher = load_teacher(str(job.teacher_dir), job.attn, need_head=True)
            teacher.to(device=device, dtype=DTYPES[job.dtype])
            starts = np.concatenate([[0], np.cumsum([sh["num_sequences"] for sh in job.shards])])
            label = "cache_teacher" if env.world_size == 1 else f"cache_teacher[rank {env.rank}]"
            progress = Progress(
                label, total_bytes=views * rows * tc.row_bytes(job.settings), enabled=not args.quiet
            )
            for i in todo:
                process_shard(job, teacher, masker, device, i, int(starts[i]), progress)
            progress.close()

    group.together(work)  # also the barrier before rank 0 writes the manifest
    if env.is_main:
        manifest = finalize(job, wait_s=120.0 if env.world_size > 1 else 0.0)
        t = manifest["totals"]
        print(
            f"wrote {job.out / tc.MANIFEST_NAME}: {_gb(t['bytes'])}, {t['bytes_per_token']:.2f} B per token "
            f"({views} view(s)), rows per view {t['rows_per_view']}; "
            + (
                f"the top-{job.settings['k']} ids hold {t['mean_covered']:.1%} of the teacher's mass at T={job.temperature} on average"
                if job.settings["mode"] == "topk"
                else f"{t['mean_covered']:.1f} distinct ids per position on average"
            ),
            flush=True,
        )
    if own_group:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
