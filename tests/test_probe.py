"""The downstream probe of validation (pipeline/evaluation/probe.py, ``--train.probe``).

In process: the logistic regression on synthetic features, reading a probe folder (every format,
pairs, refusals), and a probe on the tiny teacher (accuracy, the RNG and the mode left as they
were). End to end: a 2-rank run with the probe logs probe_accuracy at each validation and the
losses of the same run without it; a missing folder is one line before training.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from pipeline_helpers import base_args, check_ok, eval_records, launch, losses

from data_prep.errors import UserError
from pipeline.evaluation.probe import (
    Probe,
    probe_accuracy,
    read_probe_examples,
    read_probe_set,
)

FAMILY = ["sister", "father", "mother", "brother", "daughter", "husband", "wife", "aunt"]
PLACES = ["house", "garden", "room", "window", "door", "carriage", "road", "town"]


def _sentences(words: list[str], count: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 9))) for _ in range(count)]


def write_probe(folder: Path, train: int = 64, valid: int = 32) -> Path:
    """Two obviously different kinds of sentence (family words, places), alternating."""
    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("validation", valid)):
        family, places = _sentences(FAMILY, n // 2, rng), _sentences(PLACES, n // 2, rng)
        rows = [
            {"sentence": s, "label": label}
            for pair in zip(family, places)
            for label, s in enumerate(pair)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_logistic_probe_separates_what_is_separable_and_not_random_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 3
    y = torch.arange(600) % 3
    x = centres[y] + torch.randn(600, 16, generator=gen)
    valid_acc, train_acc = probe_accuracy(x[:400], y[:400], x[400:], y[400:])
    assert valid_acc > 0.95 and train_acc > 0.95
    labels = torch.randint(0, 2, (800,), generator=gen)
    noise = torch.randn(800, 16, generator=gen)
    valid_acc, _ = probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:])
    assert 0.4 < valid_acc < 0.6
    # deterministic: the same fit twice
    assert probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:])[0] == valid_acc


def test_probe_folders_in_every_format_and_their_refusals(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    rows = [
        {"sentence1": f"a {i}", "sentence2": f"b {i}", "label": ["no", "yes"][i % 2]}
        for i in range(10)
    ]
    with open(pairs / "train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["sentence1", "sentence2", "label"])
        writer.writeheader()
        writer.writerows(rows)
    tsv = "".join(f"{r['sentence1']}\t{r['sentence2']}\t{r['label']}\n" for r in rows)
    (pairs / "validation.tsv").write_text('sentence1\tsentence2\tlabel\n"odd quote\tx\tyes\n' + tsv)
    train, valid = read_probe_set(pairs, 4)
    assert len(train.first) == 4 and train.second is not None and set(train.labels) <= {"no", "yes"}
    assert len(valid.first) == 4
    _, whole = read_probe_set(pairs, 100)  # GLUE's tsv: quotes are text
    assert whole.first[0] == '"odd quote' and whole.labels[0] == "yes" and len(whole.first) == 11
    assert read_probe_examples(pairs, 4, main=False) is None

    with pytest.raises(UserError, match="no such folder"):
        read_probe_examples(tmp_path / "nope", 8, main=False)
    single = write_probe(tmp_path / "single", 8, 4)
    (single / "validation.jsonl").unlink()
    with pytest.raises(UserError, match=r"validation\.jsonl is missing"):
        read_probe_set(single, 8)
    (single / "validation.jsonl").write_text('{"text": "no sentence column", "label": 0}\n')
    with pytest.raises(UserError, match="example 1 has no sentence"):
        read_probe_set(single, 8)
    (single / "validation.csv").write_text("sentence,label\nx,0\n")
    with pytest.raises(UserError, match="several validation files"):
        read_probe_set(single, 8)
    (single / "validation.jsonl").unlink()
    (single / "train.jsonl").write_text('{"sentence": "one label", "label": 1}\n' * 3)
    with pytest.raises(UserError, match="two different labels"):
        read_probe_set(single, 8)


def test_probe_on_a_model_leaves_its_mode_and_the_random_state(
    tmp_path: Path, tiny_teacher: Path
) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from pipeline.model.masked_lm import MaskedLM

    model = MaskedLM(AutoModelForMaskedLM.from_pretrained(str(tiny_teacher)))
    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    train, valid = read_probe_set(write_probe(tmp_path / "probe"), 512)
    probe = Probe(train, valid, tiny_teacher, 64, int(tok.pad_token_id), torch.device("cpu"))
    model.train()
    rng = torch.get_rng_state()
    metrics = probe.run(model)
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert metrics["probe_accuracy"] >= 0.9 and metrics["probe_train_accuracy"] >= 0.9
    assert probe.run(model)["probe_accuracy"] == metrics["probe_accuracy"]

    # pairs: [CLS] a [SEP] b [SEP], cut to max_len
    pair = read_probe_set(_pair_folder(tmp_path / "pairs"), 8)
    ids, mask = Probe(
        *pair, tiny_teacher, 64, int(tok.pad_token_id), torch.device("cpu")
    ).train.batches[0]
    n = int(mask[0].sum())
    assert ids[0, :n].tolist() == tok("a sister", "b house")["input_ids"]
    assert ids[0, n:].eq(tok.pad_token_id).all()


def _pair_folder(folder: Path) -> Path:
    folder.mkdir()
    for split in ("train", "validation"):
        rows = [{"sentence1": "a sister", "sentence2": "b house", "label": 0},
                {"sentence1": "a road", "sentence2": "b", "label": 1}]  # fmt: skip
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_run_with_the_probe_logs_it_and_trains_the_same(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """reference_run's arguments, with the probe at steps 0, 4 and 8: the same losses."""
    run = tmp_path / "probed"
    args = base_args(tiny_teacher, small_data_dir, run, **{
        "--max-steps": 8, "--save-every": 4, "--train.sample_log": "true", "--eval-every": 4,
        "--train.eval_on_start": "true", "--train.probe": write_probe(tmp_path / "probe"),
    })  # fmt: skip
    result = launch(args, nproc=2)
    check_ok(result)
    assert losses(run) == losses(reference_run)
    evals = eval_records(run)
    assert [e["step"] for e in evals] == [0, 4, 8]
    for e in evals:
        assert {"mlm_loss", "probe_accuracy", "probe_train_accuracy"} <= set(e["eval"])
        assert 0.0 <= e["eval"]["probe_accuracy"] <= 1.0
    assert evals[-1]["eval"]["probe_accuracy"] >= 0.8
    assert "probe: " in result.stdout and "64 train / 32 validation" in result.stdout


def test_a_missing_probe_folder_is_refused_in_one_line(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    out = tmp_path / "run"
    args = base_args(tiny_teacher, small_data_dir, out, **{"--train.probe": tmp_path / "nope"})
    result = launch(args, launcher="python")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "train.probe" in errors[0] and "nope" in errors[0], errors
    assert not (out / "config.yaml").exists() and not (out / "model").exists()
