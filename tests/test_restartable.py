"""One restartable-job mechanism (data prep and the teacher cache): the plan, done markers that
list their files, stale temporaries of one unit, and a finalize that refuses unfinished units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_prep.errors import UserError
from data_prep.restartable import RestartableJob
from data_prep.versioned import load_versioned, stamp


def _job(folder: Path) -> RestartableJob:
    return RestartableJob(
        folder=folder,
        what="test job",
        plan_name="plan.json",
        plan_format="distil-test",
        plan_version=1,
        marker_of=lambda unit: folder / "done" / f"{unit}.json",
        rerun="rerun it",
    )


def _settings_differ(new: dict[str, Any]) -> Any:
    return lambda old: [
        f"{k} (started with {old['settings'].get(k)}, now {v})"
        for k, v in new["settings"].items()
        if old["settings"].get(k) != v
    ]


def test_the_plan_is_written_once_and_checked_on_every_restart(tmp_path: Path) -> None:
    job = _job(tmp_path / "job")
    plan = {"settings": {"seq_len": 64, "seed": 1}}
    assert not job.check_plan(plan, _settings_differ(plan))  # a fresh folder
    job.write_plan(plan)
    assert json.loads(job.plan_path.read_text())["format"] == "distil-test"
    assert job.check_plan(plan, _settings_differ(plan))  # a restart that agrees
    other = {"settings": {"seq_len": 128, "seed": 1}}
    with pytest.raises(UserError) as err:
        job.check_plan(other, _settings_differ(other))
    assert "seq_len (started with 64, now 128)" in str(err.value)
    assert "holds a test job started with other settings" in str(err.value)


def test_a_unit_is_done_when_its_marker_and_every_file_it_lists_are_there(tmp_path: Path) -> None:
    job = _job(tmp_path)
    data = tmp_path / "u1.bin"
    data.write_bytes(b"12345")
    assert not job.done("u1")
    job.commit("u1", {"rows": 5}, [data])
    assert job.done("u1") and job.record("u1") == {"rows": 5, "files": {"u1.bin": 5}}
    data.write_bytes(b"123")  # truncated under its final name: redo the unit
    assert not job.done("u1")
    data.unlink()
    assert not job.done("u1")
    job.marker_of("u2").write_text("{not json")
    assert not job.done("u2")


def test_only_the_unit_s_own_temporaries_are_removed(tmp_path: Path) -> None:
    job = _job(tmp_path)
    mine = [tmp_path / ".00001-000.bin.tmp-123", tmp_path / ".00001-001.idx.tmp-9"]
    others = [tmp_path / ".00002-000.bin.tmp-123", tmp_path / "00001-000.bin"]
    for p in mine + others:
        p.write_bytes(b"x")
    job.remove_temporaries([(tmp_path, "00001-"), (tmp_path / "missing", "00001-")])
    assert [p.exists() for p in mine + others] == [False, False, True, True]


def test_finalize_names_the_units_not_done_and_publishes_last(tmp_path: Path) -> None:
    job = _job(tmp_path)
    for unit in ("a", "c"):
        job.commit(unit, {"unit": unit}, [])
    with pytest.raises(UserError, match=r"1 of 3 units are not finished \(b\); rerun it"):
        job.finished_records(["a", "b", "c"])
    assert not (tmp_path / "manifest.json").exists()
    job.commit("b", {"unit": "b"}, [])
    records = job.finished_records(["a", "b", "c"])
    assert [r["unit"] for r in records] == ["a", "b", "c"]
    job.publish("manifest.json", {"units": 3})
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"units": 3}


def test_versioned_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(stamp({"a": 1}, "fmt", 1)))
    assert load_versioned(path, "fmt", 1, "fix it")["a"] == 1
    with pytest.raises(UserError, match="format 'fmt' v1, expected 'fmt' v2; fix it"):
        load_versioned(path, "fmt", 2, "fix it")
    path.write_text(json.dumps({"a": 1}))  # written before the format had a name
    assert load_versioned(path, "fmt", 1, "fix it", unversioned=1)["a"] == 1
    with pytest.raises(UserError, match="format None"):
        load_versioned(path, "fmt", 1, "fix it")
    path.write_text("{cut")
    with pytest.raises(UserError, match="not valid JSON"):
        load_versioned(path, "fmt", 1, "fix it")
    with pytest.raises(UserError, match="missing; fix it"):
        load_versioned(tmp_path / "none.json", "fmt", 1, "fix it")


def test_a_folder_of_other_files_is_never_written_into(tmp_path: Path) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    job = _job(folder)
    plan = {"settings": {"seq_len": 64}}
    with pytest.raises(UserError, match="holds other files"):
        job.check_plan(plan, _settings_differ(plan))
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
