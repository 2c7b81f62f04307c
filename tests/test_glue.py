"""pipeline.evaluation.glue: GLUE metrics against sklearn/scipy, the task specs, local task
folders (jsonl, csv, tsv, parquet) fine-tuned for real on a tiny BERT (and a tiny DistilBERT),
the resumable runner, one-line errors, and a hub task name resolved offline from the caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import REPO, make_bert_teacher

from data_prep.errors import UserError
from pipeline.evaluation import glue_tasks
from pipeline.evaluation.glue import format_table, run_glue
from pipeline.evaluation.glue_tasks import TASKS, load_task

BERT_UNCASED = REPO / "tests" / "assets" / "bert-base-uncased"
QUICK = {"epochs": 1, "batch_size": 16, "max_len": 32, "lr": 1e-3}

GOOD = ["good", "great", "lovely", "fine", "superb"]
BAD = ["bad", "awful", "poor", "dull", "grim"]
NOUNS = ["day", "film", "meal", "trip", "song", "book", "game"]  # 7: not tied to the labels


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine, two threads that wait for each other make a
    0.1 s fine-tune take seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BertForMaskedLM with the real bert-base-uncased tokenizer."""
    return make_bert_teacher(tmp_path_factory.mktemp("glue") / "bert", BERT_UNCASED, layers=2)


def _sst2(n: int, offset: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        label = (i + offset) % 2
        word = (GOOD if label else BAD)[i % 5]
        rows.append({"sentence": f"a {word} {NOUNS[i % 7]} .", "label": label, "idx": i})
    return rows


def _pairs(n: int, offset: int, regression: bool = False) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        same = (i + offset) % 2
        other = GOOD[i % 5] if same else BAD[i % 5]
        label: float = round((i * 7 % 26) / 5, 1) if regression else 1 - same
        rows.append(
            {
                "sentence1": f'the "{GOOD[i % 5]} {NOUNS[i % 7]} came',  # a stray quote: GLUE's tsv
                "sentence2": f"a {other} {NOUNS[i % 7]} came",
                "label": label,
                "idx": i,
            }
        )
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:  # csv (quoted as csv does) or GLUE's unquoted tsv
        sep = "\t" if path.suffix == ".tsv" else ","

        def cell(v: Any) -> str:
            s = str(v)
            return f'"{s.replace(chr(34), 2 * chr(34))}"' if sep == "," and '"' in s else s

        lines = [sep.join(cols)] + [sep.join(cell(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sst2 (jsonl), rte (tsv; validation labels as GLUE's class names), stsb (csv train,
    parquet validation): 48 train and 24 validation rows each."""
    root = tmp_path_factory.mktemp("glue_data")
    out = {name: root / name for name in ("sst2", "rte", "stsb")}
    for folder in out.values():
        folder.mkdir()
    _write(out["sst2"] / "train.jsonl", _sst2(48, 0))
    _write(out["sst2"] / "validation.jsonl", _sst2(24, 1))
    _write(out["rte"] / "train.tsv", _pairs(48, 0))
    names = TASKS["rte"].label_names
    _write(
        out["rte"] / "validation.tsv",
        [{**r, "label": names[int(r["label"])]} for r in _pairs(24, 1)],
    )
    _write(out["stsb"] / "train.csv", _pairs(48, 0, regression=True))
    _write(out["stsb"] / "validation.parquet", _pairs(24, 1, regression=True))
    return out


# --- metrics ----------------------------------------------------------------------------------
def test_metrics_match_sklearn_and_scipy() -> None:
    from scipy import stats
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(2, 200))
        k = 3 if trial % 3 == 0 else 2
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        if trial % 5 == 1:
            p = np.full(n, int(rng.integers(0, k)))  # all predictions one class
        if trial % 7 == 2:
            p = y.copy()
        assert glue_tasks.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))
        mcc = glue_tasks.matthews_correlation(p, y)
        assert mcc == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12) and not np.isnan(mcc)
        if k == 2:
            want = skm.f1_score(y, p, pos_label=1, zero_division=0.0)
            assert glue_tasks.f1(p, y) == pytest.approx(want)
        # regression, with ties (rounded) in both
        a = np.round(rng.normal(size=n) * 2) / 2
        b = np.round(a + rng.normal(size=n), 1 if trial % 2 else 0)
        if np.ptp(a) and np.ptp(b):
            assert glue_tasks.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-9)
            assert glue_tasks.spearmanr(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-9)
        np.testing.assert_allclose(glue_tasks.average_ranks(b), stats.rankdata(b))
    # degenerate: one class everywhere, constant scores: 0, never NaN
    ones, zeros = [1] * 10, [0] * 10
    assert glue_tasks.matthews_correlation(ones, [0, 1] * 5) == 0.0
    assert glue_tasks.matthews_correlation(ones, ones) == 0.0
    assert glue_tasks.f1(zeros, [0, 1] * 5) == 0.0 and glue_tasks.f1(zeros, zeros) == 0.0
    assert glue_tasks.pearson([2.0] * 10, range(10)) == 0.0
    assert glue_tasks.spearmanr(range(10), [3.0] * 10) == 0.0


def test_task_specs() -> None:
    assert list(TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    expect = {
        "cola": (("sentence",), 2, ("matthews_correlation",)),
        "sst2": (("sentence",), 2, ("accuracy",)),
        "mrpc": (("sentence1", "sentence2"), 2, ("f1", "accuracy")),
        "qqp": (("question1", "question2"), 2, ("f1", "accuracy")),
        "stsb": (("sentence1", "sentence2"), 1, ("pearson", "spearmanr")),
        "mnli": (("premise", "hypothesis"), 3, ("accuracy",)),
        "qnli": (("question", "sentence"), 2, ("accuracy",)),
        "rte": (("sentence1", "sentence2"), 2, ("accuracy",)),
        "wnli": (("sentence1", "sentence2"), 2, ("accuracy",)),
    }
    for name, (columns, labels, metrics) in expect.items():
        spec = TASKS[name]
        assert (spec.columns, spec.num_labels, spec.metrics) == (columns, labels, metrics)
        assert spec.evals == (
            {"mnli": "validation_matched", "mnli-mm": "validation_mismatched"}
            if name == "mnli"
            else {name: "validation"}
        )


# --- local folders, fine-tuning and the runner ------------------------------------------------
def test_folders_read_in_every_format(folders: dict[str, Path]) -> None:
    sst2 = load_task(f"sst2={folders['sst2']}")
    assert sst2.source == f"folder:{folders['sst2'].resolve()}"
    assert len(sst2.splits["train"]) == 48 and sst2.splits["validation"].labels[:2] == [1, 0]
    rte = load_task(f"RTE={folders['rte']}")  # names are case-insensitive
    assert rte.splits["train"].texts[0][0] == 'the "good day came'  # tsv: quotes kept
    assert rte.splits["validation"].labels == [r["label"] for r in _pairs(24, 1)]
    stsb = load_task(f"stsb={folders['stsb']}")
    for split, n, offset in (("train", 48, 0), ("validation", 24, 1)):
        rows = _pairs(n, offset, regression=True)
        assert stsb.splits[split].labels == [r["label"] for r in rows]
        assert stsb.splits[split].texts[0] == [r["sentence1"] for r in rows]  # csv unquoted


def test_bad_folder_is_one_line(tmp_path: Path, tiny_bert: Path, folders: dict[str, Path]) -> None:
    bad = tmp_path / "rte"
    bad.mkdir()
    _write(bad / "train.jsonl", [{"sentence1": "a", "label": 0}])
    with pytest.raises(UserError) as err:
        load_task(f"rte={bad}")
    msg = str(err.value)
    assert "\n" not in msg and str(bad / "train.jsonl") in msg
    assert "sentence2" in msg and "sentence1, sentence2, label" in msg
    _write(bad / "train.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 0}])
    with pytest.raises(UserError, match=r"rte/validation\.\*: missing.*sentence1, sentence2"):
        load_task(f"rte={bad}")
    _write(bad / "validation.csv", [{"sentence1": "a", "sentence2": "b", "label": 7}])
    with pytest.raises(UserError, match=r"validation\.csv: row 1: label '7'"):
        load_task(f"rte={bad}")
    with pytest.raises(UserError, match="unknown; expected one of cola, sst2"):
        load_task("sst3")
    # the runner reads every task before it trains any
    lines: list[str] = []
    with pytest.raises(UserError, match="label '7'"):
        tasks = [f"sst2={folders['sst2']}", f"rte={bad}"]
        run_glue(tiny_bert, tasks, [0], tmp_path / "g.json", progress=lines.append, **QUICK)
    assert not lines and not (tmp_path / "g.json").exists()


def test_run_glue_results_and_resume(
    tmp_path: Path, tiny_bert: Path, folders: dict[str, Path]
) -> None:
    tasks = [f"{name}={folder}" for name, folder in folders.items()]
    out = tmp_path / "glue.json"
    lines: list[str] = []
    first = run_glue(tiny_bert, tasks, [0, 1], out, progress=lines.append, **QUICK)
    ran = [line for line in lines if " seed " in line]
    assert len(ran) == 6 and all(" s, " in line for line in ran), lines
    assert json.loads(out.read_text()) == first
    keys = {"sst2": {"sst2": ["accuracy"]}, "rte": {"rte": ["accuracy"]},
            "stsb": {"stsb": ["pearson", "spearmanr"]}}  # fmt: skip
    for name, results in keys.items():
        entry = first["tasks"][name]
        assert {k: list(v) for k, v in entry["results"].items()} == results
        assert entry["settings"]["epochs"] == 1 and entry["settings"]["max_len"] == 32
        assert entry["settings"]["lr"] == 1e-3 and entry["seeds"] == [0, 1]
        assert entry["data"]["train_examples"] == 48
        for metrics in entry["results"].values():
            for v in metrics.values():
                seeds = list(v["per_seed"].values())
                assert list(v["per_seed"]) == ["0", "1"]
                assert v["min"] <= v["median"] <= v["max"] and v["median"] == np.median(seeds)
                assert -1 <= v["min"] <= v["max"] <= 1
        assert entry["seconds"] == pytest.approx(sum(r["seconds"] for r in entry["runs"].values()))
    glue_order = ["sst2", "stsb", "rte"]
    assert list(first["summary"]) == glue_order and first["score_tasks"] == glue_order
    table = format_table(first)
    assert "stsb     spearmanr" in table and "score" in table

    # rerun with a third seed: only the third runs, the first two are kept as they were
    lines.clear()
    second = run_glue(tiny_bert, tasks, [0, 1, 2], out, progress=lines.append, **QUICK)
    ran = [line for line in lines if " seed " in line]
    assert [line.split(":")[1] for line in ran] == [" sst2 seed 2", " rte seed 2", " stsb seed 2"]
    for name in keys:
        runs = second["tasks"][name]["runs"]
        assert list(runs) == ["0", "1", "2"]
        assert {s: runs[s] for s in ("0", "1")} == first["tasks"][name]["runs"]
        assert second["tasks"][name]["seeds"] == [0, 1, 2]
    # fewer seeds: nothing runs, the results summarise those seeds, the other runs are kept
    lines.clear()
    third = run_glue(tiny_bert, tasks, [2, 0], out, progress=lines.append, **QUICK)
    assert not [line for line in lines if " seed " in line], lines
    assert lines[0] == "glue: sst2: seed(s) 2, 0 done earlier, kept"
    assert list(third["tasks"]["rte"]["results"]["rte"]["accuracy"]["per_seed"]) == ["2", "0"]
    assert list(third["tasks"]["rte"]["runs"]) == ["0", "1", "2"]
    # the same seed on a fresh file gives the same numbers (what resuming relies on)
    again = run_glue(tiny_bert, tasks[:1], [1], tmp_path / "again.json", progress=print, **QUICK)
    rerun, run = again["tasks"]["sst2"]["runs"]["1"], first["tasks"]["sst2"]["runs"]["1"]
    assert (rerun["metrics"], rerun["train_loss"]) == (run["metrics"], run["train_loss"])
    # other settings: refused in one line, the file unchanged
    before = out.read_bytes()
    with pytest.raises(UserError) as err:
        run_glue(tiny_bert, tasks, [0, 1, 2], out, progress=lines.append, **{**QUICK, "lr": 5e-4})
    assert "\n" not in str(err.value) and "lr 0.001 -> 0.0005" in str(err.value)
    assert out.read_bytes() == before


def test_fine_tuning_learns(tmp_path: Path, tiny_bert: Path, folders: dict[str, Path]) -> None:
    """Single sentences and pairs are learnt, and scored in the order of their labels."""
    tasks = [f"sst2={folders['sst2']}", f"rte={folders['rte']}"]
    settings = {**QUICK, "epochs": 30}
    result = run_glue(tiny_bert, tasks, [0], tmp_path / "g.json", progress=print, **settings)
    assert result["summary"]["sst2"]["accuracy"] >= 0.9, result["summary"]
    assert result["summary"]["rte"]["accuracy"] >= 0.9, result["summary"]


def test_metric_keys_of_the_other_tasks(tmp_path: Path, tiny_bert: Path) -> None:
    """cola, mrpc and mnli (3 labels, reported on matched and mismatched validation)."""
    files = {
        "cola/train.jsonl": _sst2(24, 0),
        "cola/validation.jsonl": _sst2(12, 1),
        "mrpc/train.csv": _pairs(24, 0),
        "mrpc/validation.csv": _pairs(12, 1),
    }
    for split, offset in (("train", 0), ("validation_matched", 1), ("validation_mismatched", 2)):
        rows = [{"premise": r["sentence1"], "hypothesis": r["sentence2"], "label": (i + offset) % 3}
                for i, r in enumerate(_pairs(24, offset))]  # fmt: skip
        files[f"mnli/{split}.parquet"] = rows
    first = files["mrpc/validation.csv"][0]
    first["label"] = TASKS["mrpc"].label_names[first["label"]]  # a class name
    for name, rows in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _write(tmp_path / name, [{k: v for k, v in r.items() if k != "idx"} for r in rows])
    tasks = [f"{name}={tmp_path / name}" for name in ("cola", "mrpc", "mnli")]
    result = run_glue(tiny_bert, tasks, [3], tmp_path / "g.json", progress=print, **QUICK)
    keys = {name: {k: list(v) for k, v in entry["results"].items()}
            for name, entry in result["tasks"].items()}  # fmt: skip
    assert keys == {
        "cola": {"cola": ["matthews_correlation"]},
        "mrpc": {"mrpc": ["f1", "accuracy"]},
        "mnli": {"mnli": ["accuracy"], "mnli-mm": ["accuracy"]},
    }
    assert result["tasks"]["mnli"]["data"]["eval_examples"] == {"mnli": 24, "mnli-mm": 24}
    assert list(result["summary"]) == ["cola", "mrpc", "mnli", "mnli-mm"]
    assert "mnli-mm  accuracy" in format_table(result)


def test_distilbert_takes_no_token_types(tmp_path: Path, folders: dict[str, Path]) -> None:
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(BERT_UNCASED))
    cfg = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    DistilBertForMaskedLM(cfg).save_pretrained(str(tmp_path / "distil"))
    tok.save_pretrained(str(tmp_path / "distil"))
    result = run_glue(tmp_path / "distil", [f"rte={folders['rte']}"], [0], tmp_path / "g.json",
                      progress=print, **QUICK)  # fmt: skip
    assert set(result["tasks"]["rte"]["results"]["rte"]) == {"accuracy"}


# --- the hub name, offline ------------------------------------------------------------------
HUB_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, shutil, sys
    from pathlib import Path
    import datasets
    from datasets import ClassLabel, Dataset, Features, Value
    from data_prep.errors import UserError
    from pipeline.evaluation.glue_tasks import load_task

    repo, home = Path(sys.argv[1]), Path(os.environ["HF_HOME"])
    report = {}
    try:  # nothing cached: one line that says what to do
        load_task("mrpc")
    except UserError as exc:
        report["uncached"] = str(exc)
    # the repository as the hub holds it: per-config parquet shards and the README's configs
    features = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                         "label": ClassLabel(names=["not_equivalent", "equivalent"]),
                         "idx": Value("int32")})
    rows = json.loads(sys.argv[2])
    (repo / "mrpc").mkdir(parents=True)
    for split, part in rows.items():
        Dataset.from_list(part, features=features).to_parquet(
            str(repo / "mrpc" / f"{split}-00000-of-00001.parquet"))
    (repo / "README.md").write_text(
        "---\\nconfigs:\\n- config_name: mrpc\\n  data_files:\\n  - split: train\\n"
        "    path: mrpc/train-*\\n  - split: validation\\n    path: mrpc/validation-*\\n---\\n")
    # 1. a snapshot in the hub cache (`hf download nyu-mll/glue --repo-type dataset`)
    cache = home / "hub" / "datasets--nyu-mll--glue"
    commit = hashlib.sha1(b"glue").hexdigest()
    for f in sorted(p for p in repo.rglob("*") if p.is_file()):
        blob = cache / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = cache / "snapshots" / commit / f.relative_to(repo)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    data = load_task("mrpc")
    report["snapshot"] = [data.source, data.splits["validation"].texts[0][1]]
    # 2. what one load_dataset("nyu-mll/glue", "mrpc") online leaves in the datasets cache: the
    # prepared arrow files of config mrpc under nyu-mll___glue (built here from the same files)
    builder = datasets.load_dataset_builder(str(repo), "mrpc")
    builder.download_and_prepare(output_dir=str(
        datasets.config.HF_DATASETS_CACHE / "nyu-mll___glue" / "mrpc" / "0.0.0" / builder.hash))
    shutil.rmtree(home / "hub")  # so only the datasets cache can answer
    data = load_task("mrpc")
    report["datasets_cache"] = [
        data.source, {k: [s.texts[0], s.texts[1], s.labels] for k, s in data.splits.items()}]
    print(json.dumps(report))
    """
)


def test_hub_name_resolved_offline_from_the_caches(tmp_path: Path) -> None:
    rows = {
        split: [{**r, "label": int(r["label"])} for r in _pairs(n, offset)]
        for split, n, offset in (("train", 12, 0), ("validation", 6, 1))
    }
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(var, None)
    script = tmp_path / "hub.py"
    script.write_text(HUB_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "glue"), json.dumps(rows)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    uncached = report["uncached"]
    assert "\n" not in uncached and "nyu-mll/glue" in uncached and "mrpc=FOLDER" in uncached
    source, text = report["snapshot"]
    assert source.startswith("hub-cache:") and source.endswith("/mrpc")
    assert text == rows["validation"][1]["sentence1"]
    source, splits = report["datasets_cache"]
    assert source == "hub:nyu-mll/glue"
    for split, part in rows.items():
        assert splits[split] == [
            [r["sentence1"] for r in part],
            [r["sentence2"] for r in part],
            [r["label"] for r in part],
        ]


@pytest.mark.slow  # run_glue (results, resume) is tested in process above; the --json wiring
# of pipeline.evaluate by test_embeddings.py's command-line test
def test_the_command_line_runs_and_resumes_glue(
    tmp_path: Path, tiny_bert: Path, folders: dict[str, Path]
) -> None:
    """``python -m pipeline.evaluate --model M --tasks ... --seeds N --json OUT``: GLUE's metric
    names per task with the median and the per-seed values; a rerun with more seeds runs only
    the new ones."""
    import subprocess
    import sys

    out = tmp_path / "eval.json"
    argv = [sys.executable, "-m", "pipeline.evaluate", "--model", str(tiny_bert), "--tasks",
            f"rte={folders['rte']}", f"stsb={folders['stsb']}", "--json", str(out),
            "--glue-epochs", "1", "--glue-max-len", "32", "--glue-batch-size", "16"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*argv, "--seeds", "1"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    result = json.loads(out.read_text())
    assert set(result["tasks"]["stsb"]["results"]["stsb"]) == {"pearson", "spearmanr"}
    assert list(result["tasks"]["rte"]["results"]["rte"]["accuracy"]["per_seed"]) == ["0"]
    assert "rte" in first.stdout and "stsb" in first.stdout  # the table
    again = subprocess.run([*argv, "--seeds", "2"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert [line for line in again.stderr.splitlines() if " seed " in line and " s, " in line] == [
        line for line in again.stderr.splitlines() if " seed 1: " in line
    ]
    result = json.loads(out.read_text())
    assert list(result["tasks"]["rte"]["results"]["rte"]["accuracy"]["per_seed"]) == ["0", "1"]
    refused = subprocess.run(argv[:7], capture_output=True, text=True, env=env)  # no --json
    assert refused.returncode == 2 and "--tasks needs --json" in refused.stderr


@pytest.mark.parametrize("kind", ["modernbert", "deberta-v2", "electra", "eurobert"])
def test_every_family_fine_tunes_on_a_pair_task(
    tmp_path: Path, folders: dict[str, Path], kind: str
) -> None:
    """AutoModelForSequenceClassification of each family on RTE (sentence pairs: the token types
    go only to a model whose forward takes them), a score in range."""
    from family_models import make_family_teacher

    model = make_family_teacher(tmp_path / kind, BERT_UNCASED, kind)
    out = tmp_path / "glue.json"
    result = run_glue(model, [f"rte={folders['rte']}"], [0], out, progress=lambda _: None, **QUICK)
    accuracy = result["tasks"]["rte"]["results"]["rte"]["accuracy"]["median"]
    assert 0 <= accuracy <= 1 and result["tasks"]["rte"]["data"]["train_examples"] == 48
