"""Output folders: never a half-written folder under a final name, and never a folder deleted
that the command did not make (the old atomic_dir removed whatever was at the output path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.atomic import OUTPUT_MARKER, atomic_dir, check_output_dir, output_owner
from data_prep.errors import UserError


def _build(path: Path, text: str, overwrite: bool = False, command: str = "cmd.a") -> None:
    with atomic_dir(path, command, overwrite) as tmp:
        (tmp / "file.txt").write_text(text)


def test_a_new_or_empty_folder_is_written_and_marked(tmp_path: Path) -> None:
    _build(tmp_path / "new", "one")
    (tmp_path / "empty").mkdir()
    _build(tmp_path / "empty", "two")
    for name, text in (("new", "one"), ("empty", "two")):
        assert (tmp_path / name / "file.txt").read_text() == text
        assert output_owner(tmp_path / name) == "cmd.a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no temporaries left


def test_a_folder_of_someone_else_is_refused_and_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "precious.bin").write_bytes(b"x")
    ran = []
    for overwrite in (False, True):
        with (
            pytest.raises(UserError, match="holds other files"),
            atomic_dir(mine, "cmd.a", overwrite),
        ):
            ran.append(1)
    assert not ran and [p.name for p in mine.iterdir()] == ["precious.bin"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        check_output_dir(tmp_path / "a_file", "cmd.a", True)


def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(out, "old")
    with pytest.raises(UserError, match="pass --overwrite"):
        _build(out, "new")
    with pytest.raises(UserError, match=r"holds the output of cmd\.a, not of cmd\.b"):
        _build(out, "new", overwrite=True, command="cmd.b")
    assert (out / "file.txt").read_text() == "old"
    _build(out, "new", overwrite=True)
    assert (out / "file.txt").read_text() == "new" and (out / OUTPUT_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one removed last


def test_a_failure_while_building_leaves_the_earlier_output_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(out, "old")
    with pytest.raises(RuntimeError), atomic_dir(out, "cmd.a", overwrite=True) as tmp:
        (tmp / "file.txt").write_text("half")
        raise RuntimeError("killed while writing")
    assert (out / "file.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_that_changed_while_building_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError, match="holds other files"), atomic_dir(out, "cmd.a") as tmp:
        (tmp / "file.txt").write_text("new")
        out.mkdir()
        (out / "theirs.txt").write_text("arrived meanwhile")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
