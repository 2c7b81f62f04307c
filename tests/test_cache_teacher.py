"""The teacher logits cache (pipeline.cache_teacher: format, job, writer, reader, CLI).

Format and size estimate; cache vs online loss on the same batch (exact with K = vocabulary,
bounded with top-k, an unbiased cross-entropy with sampling); restart of an interrupted job and a
2-rank job give the very bytes of a clean 1-process job; refused fingerprint mismatches; epochs
beyond V reuse the views; training from the cache equals online training (and skips the teacher);
a hidden-state loss still runs the teacher; a too-small disk is refused before any work.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import AUSTEN, Prep
from pipeline_helpers import (
    REPO,
    VENV_BIN,
    _free_port,
    base_args,
    check_ok,
    launch,
    losses,
    make_bert_teacher,
    step_records,
    train_env,
)

from data_prep.hub import resolve_ref
from data_prep.manifest import DataManifest, load_manifest
from pipeline.cache_teacher import format as tc
from pipeline.cache_teacher import job as cache_job
from pipeline.cache_teacher import writer as cache_writer
from pipeline.cache_teacher.__main__ import main as cache_teacher_main
from pipeline.cache_teacher.reader import TeacherCache, open_cache
from pipeline.config.schema import Config, MaskingConfig, validate
from pipeline.data.batch import scored_rows, take_rows
from pipeline.data.corpus import Corpus
from pipeline.data.loader import MicroBatches
from pipeline.data.masking import make_masker
from pipeline.data.sampling import BatchLayout
from pipeline.data.shards import ShardedDataset
from pipeline.model.losses import kd_loss, sparse_kd_loss

VOCAB = 4000  # the wordpiece_tokenizer fixture's, and so the tiny teacher's


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: Path) -> Path:
    """About 50 sequences of 64 tokens in 3 train shards (one per input file): small enough for a
    K = vocabulary cache and for runs that cross several epochs."""
    folder = tmp_path_factory.mktemp("tiny_corpus")
    inputs = []
    for name, size in (("persuasion", 5000), ("emma", 4000), ("mansfieldpark", 2500)):
        text = gzip.decompress((AUSTEN / f"{name}.txt.gz").read_bytes())
        start = text.index(b"\n\n", 20_000) + 2
        cut = text.index(b"\n\n", start + size) + 2
        inputs.append(folder / f"{name}.txt")
        inputs[-1].write_bytes(text[start:cut])
    out = tmp_path_factory.mktemp("data") / "tiny"
    Prep.build(
        "--input", *inputs, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", out, "--workers", "1", "--valid-fraction", "0.05", "--unit-max-files", "1",
    )  # fmt: skip
    assert len(load_manifest(out).train.shards) == 3
    return out


@pytest.fixture(scope="session")
def teacher(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: Path) -> Path:
    """A 4-layer, 32-wide BertForMaskedLM over the small WordPiece vocabulary (as tiny_teacher)."""
    return make_bert_teacher(tmp_path_factory.mktemp("teachers") / "tiny", wordpiece_tokenizer)


def build(data: Path, teacher: Path, out: Path, *extra: Any) -> None:
    """python -m pipeline.cache_teacher in this process."""
    cache_teacher_main(
        [
            "--data",
            str(data),
            "--teacher",
            str(teacher),
            "--output",
            str(out),
            "--quiet",
            *map(str, extra),
        ]
    )


def open_run_cache(cfg: Config, manifest: DataManifest) -> TeacherCache:
    """The run's cache as the trainer opens it (``manifest``: the data's, for the caller)."""
    paths = validate(cfg)
    assert cfg.model.teacher is not None and paths.teacher_cache is not None
    teacher = resolve_ref(cfg.model.teacher, "--teacher")
    return open_cache(cfg, teacher, paths.teacher_cache, Corpus(paths.sources))


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def run_config(data: Path, teacher: Path, cache: Path, **fields: Any) -> Config:
    cfg = Config()
    cfg.model.teacher, cfg.data.data, cfg.data.teacher_cache = str(teacher), [str(data)], str(cache)
    cfg.train.output = str(cache / "unused-run")
    for dotted, value in fields.items():
        section, name = dotted.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, teacher: Path) -> Path:
    """K = vocabulary, fp32 log-probs, 2 views: the online teacher, stored."""
    out = tmp_path_factory.mktemp("caches") / "full"
    build(tiny_data, teacher, out, "--top-k", VOCAB, "--values", "fp32", "--views", 2)
    return out


@pytest.fixture(scope="module")
def top8_cache(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, teacher: Path) -> Path:
    out = tmp_path_factory.mktemp("caches") / "top8"
    build(tiny_data, teacher, out, "--top-k", 8, "--views", 2, "--batch-size", 7)
    return out


def online_batch(
    data: Path, teacher: Path, cfg: Config, item: int, cache: TeacherCache
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A training micro-batch (as the trainer builds it, masks by the cache's views), its scored
    rows and the teacher's logits there."""
    from pipeline.model.masked_lm import load_teacher

    manifest = load_manifest(data)
    batches = MicroBatches(
        ShardedDataset(data, "train", manifest),
        BatchLayout(8, 8, 1, 1, 0),
        make_masker(manifest, cfg.masking),
        cfg.train.seed,
        0,
        100,
        0,
        cache=cache,
    )
    batch = batches[item]
    rows = scored_rows(batch["labels"], batch["attention_mask"], "masked")
    t = load_teacher(str(teacher), "sdpa", need_head=True)
    with torch.inference_mode():
        last, _ = t.encode(batch["input_ids"], batch["attention_mask"])
        logits = t.head(take_rows(last, rows)).clone()
    return batch, rows, logits


# --- format ------------------------------------------------------------------------------------
def test_format_size_estimate_and_stored_values(
    top8_cache: Path, tiny_data: Path, teacher: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((top8_cache / "manifest.json").read_text())
    s = manifest["settings"]
    assert (s["mode"], s["k"], s["num_views"], s["id_dtype"], s["value_dtype"]) == (
        "topk",
        8,
        2,
        "uint16",
        "float16",
    )
    assert tc.id_dtype(70_000) == np.int32 and tc.id_dtype(VOCAB) == np.uint16
    on_disk = sum(p.stat().st_size for p in top8_cache.rglob("*.v*.*"))
    assert manifest["totals"]["bytes"] == on_disk
    assert manifest["totals"]["bytes_per_masked_position"] == 8 * (2 + 2)
    # The estimate made before the work is the exact size; it is printed.
    args = cache_job.build_parser().parse_args(
        [
            "--data",
            str(tiny_data),
            "--teacher",
            str(teacher),
            "--output",
            str(top8_cache),
            "--top-k",
            "8",
            "--views",
            "2",
        ]
    )
    job = cache_job.resolve(args, torch.device("cpu"))
    everything = list(range(len(job.shards)))
    assert (
        cache_job.planned_bytes(job, everything, cache_job.planned_rows(job, everything)) == on_disk
    )
    out = top8_cache.parent / "top8_again"
    build(tiny_data, teacher, out, "--top-k", 8, "--views", 2)
    printed = capsys.readouterr().out
    assert f"to write: {on_disk / 1e6:,.2f} MB" in printed, printed
    assert "32 B per masked position" in printed
    # Rows: the trainer's masked positions, in order; values: the teacher's top-8 log-probs at T.
    cfg = run_config(tiny_data, teacher, top8_cache)
    cache = open_run_cache(cfg, load_manifest(tiny_data))
    batch, rows, logits = online_batch(tiny_data, teacher, cfg, 3, cache)
    ids, logp = cache.batch_targets(batch)
    top = torch.log_softmax(logits.float() / cfg.loss.temperature, -1).topk(8)
    assert ids.shape == (len(rows), 8) and ids.dtype == torch.int64 and logp.dtype == torch.float32
    assert torch.equal(
        ids[:, 0], top.indices[:, 0]
    )  # top-1 is unambiguous; lower ranks may tie in fp16
    assert torch.allclose(logp, top.values, atol=1e-2, rtol=2e-3)
    offsets = np.fromfile(
        tc.shard_file(top8_cache, manifest["shards"][0]["path"], 1, "off"), dtype=np.int64
    )
    assert offsets[0] == 0 and np.all(np.diff(offsets) >= 0)
    assert offsets[-1] == manifest["shards"][0]["views"][1]["rows"]


# --- the loss ----------------------------------------------------------------------------------
def test_cache_loss_equals_online_loss_on_the_same_batch(
    full_cache: Path, top8_cache: Path, tiny_data: Path, teacher: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_data)
    cfg = run_config(tiny_data, teacher, full_cache)
    T = cfg.loss.temperature
    covered = {
        c: json.loads((c / "manifest.json").read_text())["totals"]["mean_covered"]
        for c in (full_cache, top8_cache)
    }
    assert covered[full_cache] == pytest.approx(1.0, abs=1e-4) and 0 < covered[top8_cache] < 0.5
    full = open_run_cache(cfg, manifest)
    for item in (0, 9):  # item 9: view 1 (the second epoch)
        batch, rows, logits = online_batch(tiny_data, teacher, cfg, item, full)
        student = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(item)) * 3
        online = kd_loss(student, logits, T).item()
        # K = V: exactly the online loss.
        ids, logp = open_run_cache(cfg, manifest).batch_targets(batch)
        assert sparse_kd_loss(student, ids, logp, T).item() == pytest.approx(online, rel=1e-5)
        # top-8 in fp16: the coarsened KL, never above the full one.
        cfg8 = run_config(tiny_data, teacher, top8_cache)
        ids8, logp8 = open_run_cache(cfg8, manifest).batch_targets(batch)
        sparse8 = sparse_kd_loss(student, ids8, logp8, T).item()
        assert 0 <= sparse8 <= online + 1e-5
    # Sampled (RS-KD): counts sum to N, unused slots weigh 0, and the cross-entropy it implies is
    # an unbiased estimate of the teacher's: sum_j c_j/N * log q_j ~ sum_v p_v log q_v.
    sampled = tmp_path / "sampled"
    build(tiny_data, teacher, sampled, "--mode", "sample", "--samples", 64, "--views", 2)
    cache = open_run_cache(run_config(tiny_data, teacher, sampled), manifest)
    assert cache.manifest.settings["value_dtype"] == "uint8"
    est, true, n = 0.0, 0.0, 0
    for item in range(6):
        batch, rows, logits = online_batch(tiny_data, teacher, cfg, item, full)
        ids, logp = cache.batch_targets(batch)
        p = logp.exp()
        assert torch.allclose(p.sum(-1), torch.ones(len(rows)), atol=1e-6)
        assert bool((p == 0).any()), "some rows should have fewer than 64 distinct tokens"
        student = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(item)) * 3
        log_q = torch.log_softmax(student / T, -1)
        est += float((p * log_q.gather(1, ids)).sum())
        true += float((torch.softmax(logits.float() / T, -1) * log_q).sum())
        n += len(rows)
        s = student.clone().requires_grad_(True)
        loss = sparse_kd_loss(s, ids, logp, T)
        loss.backward()
        assert torch.isfinite(loss) and bool(torch.isfinite(s.grad).all())
    assert est / n == pytest.approx(true / n, rel=0.01)


def test_sparse_kd_loss_ignores_empty_slots() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 30, generator=g), torch.randn(5, 30, generator=g)
    top = torch.log_softmax(t, -1).topk(6)
    padded_ids = torch.cat([top.indices, top.indices[:, :1].expand(5, 3)], 1)
    padded_logp = torch.cat([top.values, torch.full((5, 3), float("-inf"))], 1)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    a, b = (
        sparse_kd_loss(s1, top.indices, top.values, 1.0),
        sparse_kd_loss(s2, padded_ids, padded_logp, 1.0),
    )
    a.backward()
    b.backward()
    assert b.item() == pytest.approx(a.item(), rel=1e-6)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)


# --- restart and data parallel -----------------------------------------------------------------
def test_interrupted_job_resumes_to_the_same_bytes(
    top8_cache: Path,
    tiny_data: Path,
    teacher: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = tree(top8_cache)
    out = tmp_path / "cache"
    calls = {"n": 0}
    real_add = cache_writer._ViewWriter.add

    def add_then_die(self: Any, *args: Any) -> int:  # Ctrl-C in the middle of the second shard
        calls["n"] += 1
        if self.final["ids"].name.startswith("00001-000.v1"):
            raise KeyboardInterrupt
        return real_add(self, *args)

    monkeypatch.setattr(cache_writer._ViewWriter, "add", add_then_die)
    with pytest.raises(SystemExit) as stop:
        build(tiny_data, teacher, out, "--top-k", 8, "--views", 2, "--batch-size", 7)
    assert stop.value.code == 130
    monkeypatch.setattr(cache_writer._ViewWriter, "add", real_add)
    first = out / "train" / "00000-000.done.json"
    assert first.is_file() and not (out / "train" / "00001-000.done.json").exists()
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob(".*.tmp-*")), "an interrupted shard leaves no temporaries"
    # What a SIGKILL leaves behind: a stale temporary and a truncated file under a final name.
    (out / "train" / ".00001-000.v0.ids.tmp-99999").write_bytes(b"partial")
    (out / "train" / "00001-000.v0.ids").write_bytes(b"trunc")
    first_mtime = (out / "train" / "00000-000.v0.ids").stat().st_mtime_ns
    capsys.readouterr()
    build(tiny_data, teacher, out, "--top-k", 8, "--views", 2, "--batch-size", 7)
    assert "(1 already done)" in capsys.readouterr().out
    assert (out / "train" / "00000-000.v0.ids").stat().st_mtime_ns == first_mtime, (
        "a done shard was redone"
    )
    assert tree(out) == reference
    # A restart with other settings is refused instead of mixing two caches.
    with pytest.raises(SystemExit) as refused:
        build(tiny_data, teacher, out, "--top-k", 16, "--views", 2)
    assert refused.value.code == 2
    assert "k (started with 8, now 16)" in capsys.readouterr().err


def test_two_ranks_write_the_bytes_of_one(tiny_data: Path, teacher: Path, tmp_path: Path) -> None:
    args = [
        "-m",
        "pipeline.cache_teacher",
        "--data",
        str(tiny_data),
        "--teacher",
        str(teacher),
        "--top-k",
        "8",
        "--views",
        "2",
        "--batch-size",
        "5",
    ]
    env = train_env()  # one thread per process in both runs: the same kernels
    one = subprocess.run(
        [str(VENV_BIN / "python"), *args, "--output", str(tmp_path / "one")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    check_ok(one)
    two = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), *args, "--output", str(tmp_path / "two")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    check_ok(two)
    assert "on 2 rank(s)" in two.stdout
    assert tree(tmp_path / "two") == tree(tmp_path / "one")


# --- refusals ----------------------------------------------------------------------------------
def test_mismatched_cache_is_refused(
    top8_cache: Path, tiny_data: Path, teacher: Path, tmp_path: Path
) -> None:
    from data_prep.errors import UserError

    manifest = load_manifest(tiny_data)
    open_run_cache(run_config(tiny_data, teacher, top8_cache), manifest)  # the matching run
    other_teacher = make_bert_teacher(
        tmp_path / "other_teacher", Path(manifest.tokenizer.path), seed=1
    )
    cases = {
        "loss.temperature (cache 2.0, run 1.0)": run_config(
            tiny_data, teacher, top8_cache, loss__temperature=1.0
        ),
        "train.seed (cache 56, run 57)": run_config(tiny_data, teacher, top8_cache, train__seed=57),
        "masking.mlm_probability (cache 0.15, run 0.2)": run_config(
            tiny_data, teacher, top8_cache, masking__mlm_probability=0.2
        ),
        "masking.smoothing": run_config(tiny_data, teacher, top8_cache, masking__smoothing=0.0),
        "teacher weights": run_config(tiny_data, other_teacher, top8_cache),
        "ce_positions is 'all'": run_config(
            tiny_data, teacher, top8_cache, loss__ce_positions="all"
        ),
    }
    for needle, cfg in cases.items():
        with pytest.raises(UserError) as err:
            open_run_cache(cfg, manifest)
        message = str(err.value)
        assert needle in message and "\n" not in message, message
        if needle != "ce_positions is 'all'":
            assert (
                "python -m pipeline.cache_teacher" in message and "--top-k 8 --views 2" in message
            )
            # the rebuild command speaks the current flags: the config's own dotted names
            assert all(
                flag in message
                for flag in ("--output NEW_CACHE_DIR", "--train.seed ", "--loss.temperature ",
                             "--masking.mlm_probability ", "--masking.smoothing ")
            ) and "--out " not in message and "--seed " not in message, message  # fmt: skip
    # Another data set (here: the same shards under another manifest) and an unfinished cache.
    data2 = tmp_path / "data2"
    shutil.copytree(tiny_data, data2)
    m2 = json.loads((data2 / "manifest.json").read_text())
    m2["settings"]["seed"] += 1
    (data2 / "manifest.json").write_text(json.dumps(m2))
    with pytest.raises(UserError, match=r"data \(DATA_DIR/manifest.json\)"):
        open_run_cache(run_config(data2, teacher, top8_cache), load_manifest(data2))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / tc.PLAN_NAME).write_text("{}")
    with pytest.raises(UserError, match="has not finished"):
        open_run_cache(run_config(tiny_data, teacher, unfinished), manifest)
    # Through pipeline.train: exit 2, one line, no traceback.
    result = launch(
        base_args(
            teacher,
            tiny_data,
            tmp_path / "run",
            **{"--teacher-cache": top8_cache, "--loss.temperature": 3},
        ),
        launcher="python",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "loss.temperature (cache 2.0, run 3.0)" in errors[0], result.stderr[
        -3000:
    ]


def test_too_small_disk_is_refused_before_any_work(
    tiny_data: Path,
    teacher: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 50_000, 50_000))
    out = tmp_path / "cache"
    with pytest.raises(SystemExit) as stop:
        build(tiny_data, teacher, out, "--top-k", 64, "--views", 4)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "to write:" in captured.out and "free: 0.05 MB" in captured.out
    err = captured.err.strip()
    assert (
        "\n" not in err and "needs" in err and "only 0.05 MB is free" in err and "--top-k" in err
    ), err
    assert not out.exists() or not any(out.rglob("*")), (
        "nothing is written when the disk is too small"
    )


# --- views and epochs --------------------------------------------------------------------------
def test_epochs_beyond_the_views_reuse_them(tiny_data: Path, top8_cache: Path) -> None:
    """Epoch e masks with view e mod V, and the cached targets of every epoch match its masks."""
    manifest = load_manifest(tiny_data)
    ds = ShardedDataset(tiny_data, "train", manifest)
    masker = make_masker(manifest, MaskingConfig())
    cache = TeacherCache(top8_cache, tc.load_cache_manifest(top8_cache))
    n = len(ds)
    batches = MicroBatches(ds, BatchLayout(n, n, 1, 1, 0), masker, 56, 0, 5, 0, cache=cache)
    by_epoch = [batches[e] for e in range(5)]  # one global batch = one epoch here
    assert [b["view"].unique().tolist() for b in by_epoch] == [[0], [1], [0], [1], [0]]

    def masks(batch: dict[str, torch.Tensor]) -> dict[int, list[int]]:
        return {int(i): batch["labels"][r].tolist() for r, i in enumerate(batch["sample_index"])}

    assert masks(by_epoch[2]) == masks(by_epoch[0]) and masks(by_epoch[4]) == masks(by_epoch[0])
    assert masks(by_epoch[3]) == masks(by_epoch[1]) and masks(by_epoch[1]) != masks(by_epoch[0])


def _online_and_cached(
    tmp_path: Path, teacher: Path, tiny_data: Path, cache: Path, common: dict[str, Any]
) -> tuple[Path, Path, Any]:
    """The same 1-rank run twice: online teacher, then logits from ``cache`` (checked to pass)."""
    online, cached = tmp_path / "online", tmp_path / "cached"
    check_ok(launch(base_args(teacher, tiny_data, online, **common), launcher="python"))
    result = launch(
        base_args(teacher, tiny_data, cached, **common, **{"--teacher-cache": cache}),
        launcher="python",
    )
    check_ok(result)
    return online, cached, result


def test_training_from_a_full_cache_equals_online_training(
    full_cache: Path, tiny_data: Path, teacher: Path, tmp_path: Path
) -> None:
    """End to end, 1 rank: no teacher forward, the per-step losses of the online run, and epochs
    beyond V = 2 run on reused views (the lookups would fail on masks the cache does not hold)."""
    n = load_manifest(tiny_data).train.num_sequences
    steps = 2 * n // 8 + 2  # into the third epoch
    common = {
        "--max-steps": steps,
        "--loss.alpha_cos": 0,
        "--model.dropout": 0,
        "--train.sample_log": "true",
    }
    online, cached, result = _online_and_cached(tmp_path, teacher, tiny_data, full_cache, common)
    assert "no teacher forward: logits come from the teacher cache" in result.stdout
    assert "epoch e uses view e mod 2" in result.stdout and "from epoch 2 on" in result.stdout
    views = {}
    for line in (cached / "samples" / "rank00000.jsonl").read_text().splitlines():
        rec = json.loads(line)
        views[rec["step"]] = rec["views"]
    epochs = {s: [((s - 1) * 8 + k) // n for k in range(8)] for s in views}  # position // n
    assert all(views[s] == [e % 2 for e in epochs[s]] for s in views)
    assert any(2 in epochs[s] for s in views), "the run never reached epoch 2"
    a, b = losses(online), losses(cached)
    assert len(a) == len(b) == steps
    exact = [s for s in views if max(epochs[s]) < 2]  # same views online (view = epoch) and cached
    assert len(exact) >= 10
    for (step, la), (_, lb) in zip(a, b):
        if step in exact:
            assert lb == pytest.approx(la, rel=1e-5), (step, la, lb)
    ce = [r["ce"] for r in step_records(cached)]
    assert all(np.isfinite(ce))


@pytest.mark.slow
def test_hidden_state_loss_with_a_cache_still_runs_the_teacher(
    full_cache: Path, tiny_data: Path, teacher: Path, tmp_path: Path
) -> None:
    common = {"--max-steps": 4, "--loss.alpha_cos": 1.0, "--model.dropout": 0}
    online, cached, result = _online_and_cached(tmp_path, teacher, tiny_data, full_cache, common)
    assert "the teacher still runs for those (the cache carries logits only)" in result.stdout
    assert "no teacher forward" not in result.stdout
    records = step_records(cached)
    assert all("cos" in r and "ce" in r for r in records)
    for (_, la), (_, lb) in zip(losses(online), losses(cached)):
        assert lb == pytest.approx(la, rel=1e-5)


@pytest.mark.slow
def test_two_rank_training_from_a_cache(
    top8_cache: Path, tiny_data: Path, teacher: Path, tmp_path: Path
) -> None:
    """torchrun, 2 ranks: every rank looks up its own micro-batches."""
    run = tmp_path / "run"
    result = launch(
        base_args(
            teacher,
            tiny_data,
            run,
            **{"--max-steps": 3, "--loss.alpha_cos": 0, "--teacher-cache": top8_cache},
        ),
        nproc=2,
    )
    check_ok(result)
    records = step_records(run)
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["ce"]) for r in records)


@pytest.mark.slow
def test_a_failing_rank_stops_the_others(tiny_data: Path, teacher: Path, tmp_path: Path) -> None:
    """Rank 1's shard (train shard 1) is truncated: rank 1 fails with its error, rank 0 stops
    too instead of waiting at the next collective."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shard = json.loads((data / "manifest.json").read_text())["splits"]["train"]["shards"][1]
    binary = data / f"{shard['path']}.bin"
    binary.write_bytes(binary.read_bytes()[:-10])
    args = [
        "-m",
        "pipeline.cache_teacher",
        "--data",
        str(data),
        "--teacher",
        str(teacher),
        "--top-k",
        "8",
        "--output",
        str(tmp_path / "cache"),
    ]
    result = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), *args],
        cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode != 0
    errors = [
        line for line in result.stderr.splitlines() if "pipeline.cache_teacher: error:" in line
    ]
    # one line per rank (torchrun adds its own report): rank 1 its own cause, rank 0 naming
    # rank 1 and that cause
    assert len(errors) == 2, result.stderr[-3000:]
    assert all("truncated or foreign" in line for line in errors), errors
    assert sum("rank 1 failed:" in line for line in errors) == 1, errors
    assert not (tmp_path / "cache" / "manifest.json").exists()


@pytest.mark.slow  # ~18 s: cache = online in the full-cache test; the teacher still running
# beside a cache for an internal loss: test_hidden_state_loss_with_a_cache_still_runs_the_teacher
def test_narrow_student_with_relations_from_a_cache_equals_online(
    full_cache: Path, tiny_data: Path, teacher: Path, tmp_path: Path
) -> None:
    """A narrower student (any shape works with the cache: it holds vocabulary logits): logits
    from the cache, relations from the teacher, which still runs; the online run's losses."""
    common = {
        "--max-steps": 3, "--loss.alpha_cos": 0, "--model.dropout": 0, "--loss.alpha_relation": 1,
        "--model.student_hidden": 16, "--model.init": "select",
    }  # fmt: skip
    online, cached, result = _online_and_cached(tmp_path, teacher, tiny_data, full_cache, common)
    assert "the teacher still runs for those (the cache carries logits only)" in result.stdout
    records = step_records(cached)
    assert all("rel" in r and "ce" in r for r in records)
    for (_, la), (_, lb) in zip(losses(online), losses(cached)):
        assert lb == pytest.approx(la, rel=1e-5)


def test_a_damaged_or_hostile_cache_is_one_line(
    top8_cache: Path, tiny_data: Path, teacher: Path, tmp_path: Path
) -> None:
    """An id past the teacher's vocabulary would be a device-side assert in the loss on a GPU;
    a shard path in the manifest must not lead out of the cache folder."""
    from data_prep.errors import UserError

    cache = tmp_path / "cache"
    shutil.copytree(top8_cache, cache)
    manifest = load_manifest(tiny_data)
    cfg = run_config(tiny_data, teacher, cache)
    batch = online_batch(tiny_data, teacher, cfg, 0, open_run_cache(cfg, manifest))[0]
    for ids in cache.rglob("*.ids"):  # same sizes, ids past the vocabulary
        ids.write_bytes(b"\xff" * ids.stat().st_size)
    with pytest.raises(UserError, match="outside the teacher's vocabulary"):
        open_run_cache(cfg, manifest).batch_targets(batch)
    body = json.loads((cache / "manifest.json").read_text())
    body["shards"][0]["path"] = "../../etc/train/00000-000"
    (cache / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(UserError, match="leaves the cache folder"):
        open_run_cache(cfg, manifest)
