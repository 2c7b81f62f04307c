"""The typed data manifest: the one reader of DATA_DIR/manifest.json and the layout it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from data_prep.errors import UserError
from data_prep.manifest import DataManifest, load_manifest, manifest_path


def test_the_typed_manifest_writes_back_the_very_json_it_read(small_data_dir: Path) -> None:
    manifest = load_manifest(small_data_dir)
    on_disk = json.loads(manifest_path(small_data_dir).read_text())
    assert manifest.to_json() == on_disk
    assert list(manifest.to_json()) == list(on_disk)  # the keys in the same order too
    assert manifest.train.num_sequences == sum(s.num_sequences for s in manifest.train.shards)
    assert manifest.special_ids.cls == on_disk["special_ids"]["cls"]
    assert manifest.tokenizer.fingerprint == on_disk["tokenizer"]["fingerprint"]
    first = manifest.train.shards[0]
    assert (
        first.prefix(small_data_dir)
        == small_data_dir / on_disk["splits"]["train"]["shards"][0]["path"]
    )


def _edited(small_data_dir: Path, tmp_path: Path, change: Any) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(small_data_dir, folder)
    body = json.loads(manifest_path(folder).read_text())
    change(body)
    manifest_path(folder).write_text(json.dumps(body))
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("seq_len"), "field seq_len is missing"),
        (lambda m: m.update(vocab_size="4000"), "field vocab_size is not an integer ('4000')"),
        (lambda m: m["splits"]["train"]["shards"][0].pop("sha256_bin"), "field splits.train.shards.0.sha256_bin is missing"),
        (lambda m: m["special_ids"].update(mask=None), "field special_ids.mask is not an integer"),
        (lambda m: m.update(format_version=2), "format 'distil-shards' v2, expected 'distil-shards' v1"),
    ],
)  # fmt: skip
def test_a_malformed_manifest_is_one_line_naming_the_field(
    small_data_dir: Path, tmp_path: Path, change: Any, message: str
) -> None:
    folder = _edited(small_data_dir, tmp_path, change)
    with pytest.raises(UserError) as err:
        load_manifest(folder)
    text = str(err.value)
    assert message in text and str(manifest_path(folder)) in text and "\n" not in text


@pytest.mark.parametrize("path", ["../elsewhere/00000-000", "/etc/00000-000", "train/../../x", ""])
def test_a_shard_path_that_leaves_the_data_folder_is_refused(
    small_data_dir: Path, tmp_path: Path, path: str
) -> None:
    def escape(m: dict[str, Any]) -> None:
        m["splits"]["valid"]["shards"][0]["path"] = path

    folder = _edited(small_data_dir, tmp_path, escape)
    with pytest.raises(UserError, match="a path that leaves the data folder"):
        load_manifest(folder)


def test_a_blend_entry_on_disk_is_refused(small_data_dir: Path, tmp_path: Path) -> None:
    """``file`` (a shard outside DATA_DIR) exists only in a blend's manifest, built in memory."""

    def outside(m: dict[str, Any]) -> None:
        m["splits"]["train"]["shards"][0]["file"] = "/etc/passwd"

    folder = _edited(small_data_dir, tmp_path, outside)
    assert load_manifest(folder).train.shards[0].file is None
    assert (
        DataManifest.from_json(json.loads(manifest_path(folder).read_text()), "x")
        .train.shards[0]
        .prefix(folder)
        .is_relative_to(folder)
    )
