"""Benchmark of the teacher cache: training steps/s with and without it, and its size per K.

    python -m pipeline.tools.bench_cache [--steps 30] [--repeats 2] [--ks 8 32 128] [--workdir DIR]

Builds, in a temporary folder (or ``--workdir``), shards of two bundled Austen novels with the
bert-base-uncased vocabulary (30,522 ids, ``--seq-len``), a randomly initialised BERT teacher
(``--teacher-layers`` x ``--hidden``), and then measures on this machine:

- ``cache``: ``python -m pipeline.cache_teacher --top-k K`` (one view) for every ``--ks``, and
  ``--mode sample --samples 32``: the size (bytes per masked position, per corpus token, total) and
  the build time;
- ``train``: the same short ``pipeline.train`` run (1 rank, fp32, logit + MLM losses, no hidden-state
  loss) online and from the top-``--train-k`` cache, ``--repeats`` times alternately. Steps/s is the
  median over the steps after the first two of ``tokens_per_s / tokens in the step`` from the run's
  metrics.jsonl and sample log (and its 90th percentile: on a shared machine other jobs only slow
  steps down); the best repeat is reported. Every subprocess runs with ``OMP_NUM_THREADS`` (default
  1), which keeps the figures steadier where other jobs share the cores.

Every figure is one JSON line on stdout. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from data_prep.errors import UserError, cli_main
from data_prep.flags import HelpFormatter, renamed

REPO = Path(__file__).resolve().parents[2]
AUSTEN = REPO / "data_prep" / "corpus" / "austen"
TOKENIZER = REPO / "tests" / "assets" / "bert-base-uncased"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def _run(*argv: str | Path) -> float:
    """Run ``python -m ...`` from the repo; its wall time. A failure stops the benchmark."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", *map(str, argv)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise UserError(f"{' '.join(map(str, argv[:1]))} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def make_inputs(work: Path, seq_len: int, layers: int, hidden: int) -> tuple[Path, Path]:
    """DATA_DIR (two novels) and a random BERT teacher saved with the tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    data, teacher = work / "data", work / "teacher"
    if not (data / "manifest.json").is_file():
        texts = []
        for name in ("persuasion", "northangerabbey"):
            texts.append(work / f"{name}.txt")
            texts[-1].write_bytes(gzip.decompress((AUSTEN / f"{name}.txt.gz").read_bytes()))
        _run(
            "data_prep.build_shards", "--input", *texts, "--tokenizer", TOKENIZER,
            "--seq-len", str(seq_len), "--output", data, "--workers", "2", "--quiet",
        )  # fmt: skip
    if not (teacher / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
        cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=4 * hidden,
            max_position_embeddings=max(512, seq_len),
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(0)
        BertForMaskedLM(cfg).save_pretrained(str(teacher))
        tok.save_pretrained(str(teacher))
    return data, teacher


def cache_figures(data: Path, teacher: Path, out: Path, *mode: str) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)  # a finished cache would be skipped, not timed
    seconds = _run(
        "pipeline.cache_teacher",
        "--data",
        data,
        "--teacher",
        teacher,
        "--output",
        out,
        "--quiet",
        *mode,
    )
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    return {
        "bytes_per_masked_position": totals["bytes_per_masked_position"],
        "bytes_per_token_per_view": round(totals["bytes_per_token"], 3),
        "total_bytes": totals["bytes"],
        "masked_positions": sum(totals["rows_per_view"]),
        "tokens": totals["num_tokens"],
        "seconds": round(seconds, 2),
        "tokens_per_s": round(totals["num_tokens"] / seconds, 1),
    }


def steps_per_s(run: Path, data: Path) -> tuple[float, float, float]:
    """(median steps/s, 90th percentile steps/s, median tokens/s) over the steps after the first two.

    On a shared machine other jobs only ever slow a step down: the 90th percentile is the better
    estimate of the unloaded rate, the median the honest one."""
    from pipeline.data.shards import ShardedDataset

    ds = ShardedDataset(data, "train")
    tokens: dict[int, int] = {}
    for path in (run / "samples").glob("rank*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            tokens[rec["step"]] = tokens.get(rec["step"], 0) + sum(
                len(ds[i]) for i in rec["samples"]
            )
    records = [
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "eval" not in r
    ]
    timed = [r for r in records if r["step"] > 2]
    rates = sorted(r["tokens_per_s"] / tokens[r["step"]] for r in timed)
    p90 = rates[min(len(rates) - 1, round(0.9 * (len(rates) - 1)))]
    return statistics.median(rates), p90, statistics.median(r["tokens_per_s"] for r in timed)


def train(
    data: Path, teacher: Path, run: Path, steps: int, batch: int, cache: Path | None
) -> tuple[float, float, float]:
    args: list[str | Path] = [
        "pipeline.train", "--teacher", teacher, "--data", data, "--output", run,
        "--ds-config", REPO / "ds_configs" / "zero2_fp32.json", "--max-steps", str(steps),
        "--global-batch-size", str(batch), "--log-every", "1", "--eval-every", "0",
        "--save-every", "0", "--train.eval_samples", "8", "--loss.alpha_cos", "0",
        "--train.sample_log", "true", "--resume", "none", "--data.num_workers", "1",
    ]  # fmt: skip
    if cache is not None:
        args += ["--teacher-cache", cache]
    shutil.rmtree(run, ignore_errors=True)
    _run(*args)
    return steps_per_s(run, data)


PROG = "python -m pipeline.tools.bench_cache"
RENAMED = {"--batch": "--batch-size"}  # old spellings, accepted until the next release


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
        epilog="old spellings, accepted until the next release: --batch (--batch-size)",
    )
    p.add_argument("--steps", type=int, default=30, help="training steps per run")
    p.add_argument(
        "--batch-size", type=int, default=16, help="global batch of the training runs (sequences)"
    )
    p.add_argument("--repeats", type=int, default=2, help="runs of each training variant")
    p.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128], help="top-k sizes to build")
    p.add_argument("--train-k", type=int, default=32, help="the cache the training run reads")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence of the shards")
    p.add_argument("--teacher-layers", type=int, default=6, help="layers of the random teacher")
    p.add_argument("--hidden", type=int, default=256, help="hidden size of the random teacher")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    return p


@cli_main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(renamed(argv, RENAMED, PROG))
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, teacher = make_inputs(work, args.seq_len, args.teacher_layers, args.hidden)
        common = {
            "device": "cpu",
            "threads": int(_env()["OMP_NUM_THREADS"]),
            "seq_len": args.seq_len,
            "teacher": f"bert {args.teacher_layers}x{args.hidden}, vocab 30522",
        }
        caches = {}
        for k in sorted(set([*args.ks, args.train_k])):
            caches[k] = work / f"cache_k{k}"
            fig = cache_figures(data, teacher, caches[k], "--top-k", str(k))
            print(
                json.dumps({"name": "cache", "mode": "topk", "k": k, **fig, **common}), flush=True
            )
        fig = cache_figures(
            data, teacher, work / "cache_s32", "--mode", "sample", "--samples", "32"
        )
        print(
            json.dumps({"name": "cache", "mode": "sample", "samples": 32, **fig, **common}),
            flush=True,
        )
        best: dict[str, tuple[float, float, float]] = {}
        for r in range(args.repeats):
            for name, cache in (("online", None), (f"cache_k{args.train_k}", caches[args.train_k])):
                got = train(
                    data, teacher, work / f"run_{name}_{r}", args.steps, args.batch_size, cache
                )
                if got[0] > best.get(name, (0.0, 0.0, 0.0))[0]:
                    best[name] = got
        base, base90 = best["online"][:2]
        for name, (sps, p90, tps) in best.items():
            record = {
                "name": "train",
                "variant": name,
                "steps_per_s": round(sps, 3),
                "steps_per_s_p90": round(p90, 3),
                "tokens_per_s": round(tps, 1),
                "speedup_vs_online": round(sps / base, 3),
                "speedup_vs_online_p90": round(p90 / base90, 3),
                "steps": args.steps,
                "global_batch": args.batch_size,
                **common,
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
