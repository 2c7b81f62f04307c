"""Hugging Face hub IDs (data_prep.hub): resolved offline from a real hub cache laid out on disk.

An existing local path wins; an ID resolves to its cached snapshot, whose fingerprints (tokenizer,
teacher weights) are those of the same files anywhere else; a missing ID is one line that names
it and says how to get it. Through every entry point that takes one: build_shards --tokenizer,
pipeline.train --teacher, pipeline.cache_teacher --teacher, pipeline.evaluate --model/--teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import Prep
from hub_cache import go_offline, offline_env, publish
from pipeline_helpers import base_args, check_ok, launch

from data_prep.errors import UserError
from data_prep.hub import is_hub_id, resolve
from data_prep.tokenizer import TextTokenizer
from pipeline.cache_teacher import job as cache_job
from pipeline.cache_teacher.format import teacher_fingerprint

TOKENIZER_ID = "distil-test/wordpiece"
TEACHER_ID = "distil-test/tiny-bert"


@pytest.fixture(scope="module")
def hub_cache(
    tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: Path, tiny_teacher: Path
) -> Path:
    cache = tmp_path_factory.mktemp("hf_cache")
    publish(wordpiece_tokenizer, cache, TOKENIZER_ID)
    publish(tiny_teacher, cache, TEACHER_ID)
    return cache


def test_what_counts_as_a_hub_id() -> None:
    for spec in ("bert-base-uncased", "google-bert/bert-base-cased", "org/name.v2", "a_b"):
        assert is_hub_id(spec), spec
    for spec in ("/abs/path", "./rel", "a/b/c", "org/..", "a--b", "name.git", "~/tok", ""):
        assert not is_hub_id(spec), spec


def test_a_local_path_wins_and_an_id_resolves_to_its_snapshot(
    hub_cache: Path,
    wordpiece_tokenizer: Path,
    tiny_teacher: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    go_offline(monkeypatch, hub_cache)
    snapshot = resolve(TEACHER_ID, "--teacher")
    assert snapshot.parent.parent.name == "models--distil-test--tiny-bert"
    assert (snapshot / "config.json").is_symlink() and (snapshot / "model.safetensors").is_file()
    # the fingerprints are of the resolved files: the ID and the folder it came from agree
    assert teacher_fingerprint(snapshot) == teacher_fingerprint(tiny_teacher)
    by_id = TextTokenizer(TOKENIZER_ID).info
    assert by_id.fingerprint == TextTokenizer(wordpiece_tokenizer).info.fingerprint
    assert by_id.source == TOKENIZER_ID and Path(by_id.path).is_relative_to(hub_cache)
    # a folder named like the ID, where the user is, is that folder and not the cached repo
    monkeypatch.chdir(tmp_path)
    (tmp_path / "distil-test").mkdir()
    (tmp_path / "distil-test" / "tiny-bert").mkdir()
    assert resolve(TEACHER_ID, "--teacher") == Path(TEACHER_ID)
    # a missing path that cannot be an ID is left to the caller's own message
    with pytest.raises(UserError, match="tokenizer not found"):
        TextTokenizer(tmp_path / "no" / "such" / "tokenizer")


def test_a_missing_id_is_one_line_that_says_how_to_get_it(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_offline(monkeypatch, hub_cache)
    with pytest.raises(UserError) as err:
        resolve("distil-test/absent", "--teacher")
    message = str(err.value)
    assert "\n" not in message
    for needle in (
        "--teacher distil-test/absent",
        "hf download distil-test/absent",
        "HF_HUB_OFFLINE",
        str(hub_cache),
    ):
        assert needle in message, message


def test_cache_teacher_and_evaluate_take_ids(
    hub_cache: Path,
    tiny_teacher: Path,
    small_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from pipeline import evaluate

    go_offline(monkeypatch, hub_cache)
    args = cache_job.build_parser().parse_args(
        ["--data", str(small_data_dir), "--teacher", TEACHER_ID, "--output", str(tmp_path / "c"),
         "--top-k", "8"]
    )  # fmt: skip
    job = cache_job.resolve(args, torch.device("cpu"))
    assert (
        job.teacher.path.is_relative_to(hub_cache)
        and job.teacher.name == TEACHER_ID
        and job.teacher.revision is not None
    )
    assert job.ident["teacher"] == teacher_fingerprint(tiny_teacher)["fingerprint"]
    out = tmp_path / "eval.json"
    evaluate.main(
        ["--model", TEACHER_ID, "--teacher", TEACHER_ID, "--data", str(small_data_dir),
         "--samples", "8", "--json", str(out)]
    )  # fmt: skip
    mlm = json.loads(out.read_text())["mlm"]
    assert mlm["masked_tokens"] > 0 and mlm["agreement"] == 1.0  # one model, resolved twice


def test_build_shards_and_training_take_ids_offline(
    hub_cache: Path,
    wordpiece_tokenizer: Path,
    small_corpus: list[Path],
    small_data_dir: Path,
    tmp_path: Path,
) -> None:
    """As a user on an offline compute node runs them: the CLIs, HF_HUB_OFFLINE=1."""
    env = offline_env(hub_cache)
    data = tmp_path / "data"
    proc = Prep.cli(
        "data_prep.build_shards", "--input", small_corpus[2], "--tokenizer", TOKENIZER_ID,
        "--seq-len", "64", "--output", data, "--workers", "1", "--quiet", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    tok = json.loads((data / "manifest.json").read_text())["tokenizer"]
    assert tok["fingerprint"] == TextTokenizer(wordpiece_tokenizer).info.fingerprint
    assert tok["source"] == TOKENIZER_ID
    run = tmp_path / "run"
    args = base_args(TEACHER_ID, small_data_dir, run, **{"--max-steps": 2})
    check_ok(launch(args, launcher="python", env=env))
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["teacher"] == TEACHER_ID
    assert (run / "model" / "tokenizer.json").is_file()
    missing = launch(
        base_args("distil-test/absent", small_data_dir, tmp_path / "r2"), launcher="python", env=env
    )
    errors = [line for line in missing.stderr.splitlines() if "error:" in line]
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr[-3000:]
    assert len(errors) == 1 and "hf download distil-test/absent" in errors[0], errors
