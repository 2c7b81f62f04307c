"""pipeline.evaluate: held-out MLM metrics agree with the trainer's validation; the downstream
classifier learns a labelled set; bad input is one line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import REPO, base_args, check_ok, eval_records, launch, train_env


@pytest.fixture(scope="module")
def short_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path, small_data_dir: Path
) -> Path:
    run = tmp_path_factory.mktemp("eval") / "run"
    args = base_args(
        tiny_teacher,
        small_data_dir,
        run,
        **{"--max-steps": 4, "--train.eval_samples": 32, "--eval-every": 4},
    )
    check_ok(launch(args, launcher="python"))
    return run


def _evaluate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.evaluate", *map(str, args)],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
    )


def test_evaluate_matches_the_trainers_validation(
    tmp_path: Path, short_run: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    out = tmp_path / "eval.json"
    result = _evaluate(
        "--model",
        short_run,
        "--data",
        small_data_dir,
        "--teacher",
        tiny_teacher,
        "--samples",
        32,
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(out.read_text())
    trainer = eval_records(short_run)[-1]["eval"]
    # Same masks (view 0, the run's seed), same sequences, same fp32 weights: same numbers.
    assert got["mlm"]["masked_tokens"] == trainer["masked_tokens"]
    assert got["mlm"]["mlm_accuracy"] == pytest.approx(trainer["mlm_accuracy"], abs=1e-9)
    assert got["mlm"]["mlm_loss"] == pytest.approx(trainer["mlm_loss"], rel=1e-4)
    assert got["mlm"]["agreement"] == pytest.approx(trainer["agreement"], abs=1e-9)
    assert got["params"] > 0
    # An exported folder evaluates the same as its run folder.
    hf = tmp_path / "hf"
    check = subprocess.run(
        [sys.executable, "-m", "pipeline.export", "--run", str(short_run), "--output", str(hf)],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    again = _evaluate("--model", hf, "--data", small_data_dir, "--samples", 32, "--seed", 56)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["mlm"]["mlm_accuracy"] == pytest.approx(
        got["mlm"]["mlm_accuracy"], abs=1e-9
    )


def test_classifier_learns_a_separable_task(tmp_path: Path, tiny_teacher: Path) -> None:
    from pipeline.evaluation.classify import classify

    def write(path: Path, n: int, offset: int) -> None:
        with gzip.open(path, "wt") as fh:
            for i in range(n):
                label = (i + offset) % 2
                word = "winter cold snow" if label else "summer warm sun"
                fh.write(
                    json.dumps({"text": f"the {word} came again, day {i}", "label": label}) + "\n"
                )

    write(tmp_path / "train.jsonl.gz", 64, 0)
    write(tmp_path / "test.jsonl.gz", 32, 1)
    result = classify(
        tiny_teacher,
        tmp_path / "train.jsonl.gz",
        tmp_path / "test.jsonl.gz",
        epochs=6,
        lr=1e-3,
        batch_size=8,
    )
    assert result["test_examples"] == 32
    assert result["accuracy"] >= 0.9, result


def test_bad_input_is_one_line(tmp_path: Path, tiny_teacher: Path, small_data_dir: Path) -> None:
    result = _evaluate("--model", tmp_path / "nothing", "--data", small_data_dir)
    assert (
        result.returncode == 2 and "Traceback" not in result.stderr and "nothing" in result.stderr
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n')
    result = _evaluate(
        "--model", tiny_teacher, "--data", small_data_dir, "--samples", 8, "--classify", bad, bad
    )
    assert (
        result.returncode == 2
        and "Traceback" not in result.stderr
        and "bad.jsonl:1" in result.stderr
    )
