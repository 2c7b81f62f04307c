"""Refusal before hours are spent: ``pipeline.train --train.dry_run`` checks a run and writes
nothing, and ``data_prep.build_shards`` refuses a tokenizer of a model family distil cannot distil
before it tokenizes anything (one list of families, shared by data_prep and pipeline)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import REPO, base_args, check_ok, launch

BERT = REPO / "tests" / "assets" / "bert-base-uncased"
HEADER = "dry run: every check passed; nothing was written and no engine was started"


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under ``folder``: its size, mtime and (files) bytes."""
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size if p.is_file() else 0,
            p.stat().st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
        for p in sorted(folder.rglob("*"))
    }


def summary_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stdout.splitlines()
    assert lines.count(HEADER) == 1, result.stdout  # rank 0 alone prints it
    return lines[lines.index(HEADER) :]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    check_ok(result, 2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert HEADER not in result.stdout
    return errors[0]


# --- pipeline.train --train.dry_run ----------------------------------------------------------
def test_dry_run_on_two_ranks_says_the_plan_and_writes_nothing(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    run = tmp_path / "run"
    result = launch([*base_args(tiny_teacher, small_data_dir, run), "--train.dry_run"], nproc=2)
    check_ok(result)
    lines = summary_lines(result)
    text = "\n".join(lines)
    batch = "batch: global 8 = micro 4 x accum 1 x world 2 (torchrun/deepspeed, cpu)"
    assert batch in lines, text
    assert any(line.startswith(f"teacher: {tiny_teacher} (bert, 4 layers") for line in lines)
    assert any(line.startswith("student: distilbert, 2 layers x 32 wide") for line in lines), text
    assert "layer map (student<-teacher): 0<-0, 1<-3" in lines, text
    assert any(line.startswith("max_steps: 6 (") and "precision fp32" in line for line in lines)
    assert f"run folder: {run} (would be created)" in lines, text
    assert "resume: none (no complete checkpoint): a fresh run from step 0" in lines, text
    assert not run.exists()

    # an existing (empty) run folder stays as it was
    run.mkdir()
    before = snapshot(tmp_path)
    result = launch([*base_args(tiny_teacher, small_data_dir, run), "--train.dry_run", "true"])
    check_ok(result)
    assert f"run folder: {run} (exists)" in summary_lines(result)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("micro_batch", "global batch 8 = micro 3 x grad_accum x world 1 has no integer solution"),
        ("missing_data", "no_such_data: no such data folder"),
        ("missing_shard", "00001-000.bin"),
    ],
)
def test_a_dry_run_refuses_what_the_plan_refuses(
    case: str, needle: str, tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    run = tmp_path / "run"
    data = small_data_dir
    if case == "missing_data":
        data = tmp_path / "no_such_data"
    elif case == "missing_shard":
        data = tmp_path / "data"
        shutil.copytree(small_data_dir, data)
        (data / "train" / "00001-000.bin").unlink()
    extra = {"--micro-batch-size": 3} if case == "micro_batch" else {}
    args = [*base_args(tiny_teacher, data, run, **extra), "--train.dry_run"]
    line = one_error_line(launch(args, launcher="python"))
    assert line.startswith("pipeline.train: error: ") and needle in line, line
    assert not run.exists()


@pytest.mark.slow  # the dry run is tested by the other tests here; pruning by test_pruning.py
def test_a_dry_run_of_init_prune_measures_in_memory(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """A real run keeps the teacher's importance in RUN_DIR/pruning; a dry run writes nothing."""
    run = tmp_path / "run"
    prune = {
        "--model.init": "prune", "--model.student_hidden": 16, "--model.student_heads": 1,
        "--model.prune_samples": 16, "--loss.alpha_cos": 0, "--loss.alpha_hidden": 1,
    }  # fmt: skip
    result = launch(
        [*base_args(tiny_teacher, small_data_dir, run, **prune), "--train.dry_run"],
        launcher="python",
    )
    check_ok(result)
    lines = summary_lines(result)
    assert any("x 16 wide, 1 head(s)" in line and "init prune" in line for line in lines), lines
    assert any(line.startswith("note: pruning: measured") for line in lines), lines
    assert not run.exists()


@pytest.fixture(scope="module")
def saved_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path, small_data_dir: Path
) -> Path:
    """Two steps on one rank, with the checkpoint of the end."""
    run = tmp_path_factory.mktemp("dry_run") / "run"
    check_ok(launch(base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 2}), launcher="python"))  # fmt: skip
    assert (run / "checkpoints" / "global_step2" / "COMMIT.json").is_file()
    return run


@pytest.mark.slow  # ~32 s with saved_run; the same resume checks and refusals of a real run
# are in test_integration_resume.py and test_reliability.py
def test_a_dry_run_names_the_checkpoint_it_would_resume_and_changes_nothing(
    saved_run: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    before = snapshot(saved_run)
    args = [*base_args(tiny_teacher, small_data_dir, saved_run, **{"--max-steps": 4}), "--train.dry_run"]  # fmt: skip
    result = launch(args, launcher="python")
    check_ok(result)
    lines = summary_lines(result)
    ckpt = saved_run / "checkpoints" / "global_step2"
    assert f"resume: from {ckpt} (step 2, 16 samples consumed, saved by 1 rank(s))" in lines, (
        "\n".join(lines)
    )
    assert f"run folder: {saved_run} (exists)" in lines
    assert "note: resuming with changed settings: train.max_steps 2 -> 4" in lines
    assert snapshot(saved_run) == before

    # a resume the real run would refuse is refused, and still nothing changes
    args = [*base_args(tiny_teacher, small_data_dir, saved_run, **{"--lr": 1e-3}), "--train.dry_run"]  # fmt: skip
    line = one_error_line(launch(args, launcher="python"))
    assert f"{ckpt}: this run's settings differ from the checkpoint's: optim.lr" in line, line
    args = base_args(tiny_teacher, small_data_dir, saved_run, **{"--resume": "none"})
    line = one_error_line(launch([*args, "--train.dry_run"], launcher="python"))
    assert "--resume none would start a second run in the same folder" in line, line
    assert snapshot(saved_run) == before


# --- data_prep.build_shards: the teacher's family, before any tokenizing ----------------------
def test_the_families_of_data_prep_and_pipeline_agree() -> None:
    from data_prep.families import SUPPORTED_MODEL_TYPES
    from pipeline.model.families import FAMILIES

    assert sorted(FAMILIES) == sorted(SUPPORTED_MODEL_TYPES)


def model_folder(tmp_path: Path, model_type: str) -> Path:
    """The bert-base-uncased tokenizer beside a config.json of ``model_type``."""
    folder = tmp_path / model_type
    shutil.copytree(BERT, folder)
    (folder / "config.json").write_text(
        json.dumps({"model_type": model_type, "vocab_size": 30522, "hidden_size": 768})
    )
    return folder


def test_build_shards_refuses_a_model_family_it_cannot_distil_at_once(
    tmp_path: Path,
    small_corpus: list[Path],
    prep: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from data_prep import build_shards

    folder = model_folder(tmp_path, "albert")
    out = tmp_path / "out"
    argv = ["--input", small_corpus[2], "--tokenizer", folder, "--seq-len", "64", "--output", out]

    def no_tokenizer(*_: Any, **__: Any) -> None:
        raise AssertionError("the tokenizer was loaded before the refusal")

    with monkeypatch.context() as patch:
        patch.setattr(build_shards, "TextTokenizer", no_tokenizer)
        with pytest.raises(SystemExit) as stop:
            prep.build(*argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"data_prep.build_shards: error: --tokenizer {folder}: ")
    for needle in (
        "model_type 'albert'",
        "bert, distilbert, roberta",
        "modernbert",
        "tokenizer-only",
    ):
        assert needle in err[0], err[0]
    assert "--allow-any-model" in err[0]
    assert not out.exists()

    prep.build(*argv, "--allow-any-model", "--workers", "1")
    assert (out / "manifest.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["source"] == str(folder)


def test_a_supported_model_folder_and_a_tokenizer_only_folder_pass(tmp_path: Path) -> None:
    from data_prep.errors import UserError
    from data_prep.families import check_tokenizer_family, model_type_of

    assert model_type_of(BERT) is None  # a tokenizer-only folder: nothing to refuse
    check_tokenizer_family(BERT)
    check_tokenizer_family(BERT / "vocab.txt")  # a file (a SentencePiece .model, say)
    for kind in (
        "bert",
        "roberta",
        "xlm-roberta",
        "modernbert",
        "deberta-v2",
        "electra",
        "eurobert",
    ):
        check_tokenizer_family(model_folder(tmp_path, kind))
    albert = model_folder(tmp_path, "albert")
    with pytest.raises(UserError, match=r"--tokenizer org/albert \(.*albert\): .*'albert'"):
        check_tokenizer_family(albert, "org/albert")  # a hub ID names its snapshot folder too
    (albert / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match="not a readable JSON model config"):
        model_type_of(albert)
