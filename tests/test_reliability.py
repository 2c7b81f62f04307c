"""Nothing a user owns is ever deleted and no fault leaves a rank waiting (2-rank runs): export
over a run folder or a user's folder, --resume none over checkpoints, resuming an older
checkpoint, a full disk during a save, a failed universal conversion, hub IDs resolved once per
job, token ids beyond the vocabulary. Each was a defect of the code before this file existed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hub_cache import offline_env, publish
from pipeline_helpers import (
    REPO,
    _free_port,
    base_args,
    check_ok,
    launch,
    losses,
    run_nodes,
    torchrun_node,
    train_env,
)

from data_prep.indexed import IndexedReader, bin_path
from pipeline.checkpoint.save import full_disk_note


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error(result: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = [line for line in result.stderr.splitlines() if f"{prog}: error:" in line]
    assert lines, result.stderr[-3000:]
    for ours in ("pipeline", "data_prep"):  # no traceback through our code (torchrun has its own)
        assert f'File "{REPO / ours}' not in result.stderr, result.stderr[-3000:]
    return lines[0]


def _export(run: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipeline.export", "--run", str(run), "--output", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True)


def test_export_never_deletes_a_folder_it_did_not_make(tmp_path: Path, reference_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = _tree(run)
    result = _export(run, run)  # the old code deleted every checkpoint of the run here
    assert result.returncode == 2 and "holds other files" in _one_error(result, "pipeline.export")
    assert _tree(run) == before
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.bin").write_bytes(b"a user's model")
    for extra in ((), ("--overwrite",)):
        result = _export(run, models, *extra)
        assert result.returncode == 2 and "holds other files" in result.stderr
    assert [p.name for p in models.iterdir()] == ["mine.bin"]
    out = tmp_path / "hf"
    check_ok(_export(run, out))
    result = _export(run, out)
    assert result.returncode == 2 and "--overwrite" in _one_error(result, "pipeline.export")
    check_ok(_export(run, out, "--overwrite"))
    assert (out / "model.safetensors").is_file() and sorted(tmp_path.iterdir()) == [
        out, models, run
    ]  # fmt: skip


def test_train_tokenizer_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some words to learn a vocabulary from\n" * 50)
    out = tmp_path / "tok"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cmd = [sys.executable, "-m", "data_prep.train_tokenizer", "--input", str(text),
           "--output", str(out), "--vocab-size", "100"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "holds other files" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_none_over_checkpoints_is_refused_and_changes_nothing(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = _tree(run)
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 4, "--resume": "none"})
    result = launch(args, launcher="python")
    assert result.returncode == 2
    error = _one_error(result, "pipeline.train")
    assert "holds checkpoints up to step 8: --resume none" in error and "--output" in error
    assert _tree(run) == before  # config.yaml included: refused before anything is written


def test_a_folder_of_other_files_is_refused_as_a_run_folder(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    run = tmp_path / "papers"
    run.mkdir()
    (run / "draft.tex").write_text("mine")
    result = launch(base_args(tiny_teacher, small_data_dir, run), launcher="python")
    assert result.returncode == 2 and "not a run folder" in _one_error(result, "pipeline.train")
    assert [p.name for p in run.iterdir()] == ["draft.tex"]


@pytest.mark.slow  # ~29 s; the same in process: test_checkpoint.py, same name
def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """Before: the re-saved step 8 deleted the committed step 8 first (and keep_last by step
    number pruned new work). Now the newer line is moved aside whole, and the run continues."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    old8 = _tree(run / "checkpoints" / "global_step8")
    older = run / "checkpoints" / "global_step4"
    args = base_args(
        tiny_teacher,
        small_data_dir,
        run,
        **{"--max-steps": 8, "--save-every": 4, "--resume": older},
    )
    result = launch(args, nproc=2)
    check_ok(result)
    assert "set aside" in result.stdout and "not deleted" in result.stdout
    (aside,) = (run / "checkpoints").glob("set-aside-*")
    assert _tree(aside / "global_step8") == old8
    assert losses(run) == losses(reference_run)  # the same line, replayed
    nxt = launch(base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 8}), nproc=2)
    check_ok(nxt)
    assert "global_step8" in nxt.stdout and str(aside) not in nxt.stdout


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


needs_root_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="mounts a small tmpfs: needs root"
)


def test_a_failed_write_on_a_roomy_disk_is_not_called_a_full_disk(tmp_path: Path) -> None:
    assert full_disk_note(tmp_path, "unexpected pos 14080 vs 13974") == ""


@needs_root_mounts
def test_a_short_write_on_a_full_disk_is_named_as_one(tmp_path: Path) -> None:
    """torch's zip writer says ``unexpected pos`` on a full disk, without the errno."""
    small = tmp_path / "small"
    _mount_tmpfs(small, "1m")
    try:
        with pytest.raises(OSError), open(small / "filler", "wb") as fh:
            fh.write(b"x" * (2 << 20))
        note = full_disk_note(small, "RuntimeError: unexpected pos 14080 vs 13974")
        assert "No space left on device" in note and str(small) in note
        assert full_disk_note(small, "OSError: [Errno 28] No space left on device") == ""
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@needs_root_mounts
def test_a_full_disk_during_a_save_stops_every_rank_at_once_and_loses_nothing(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """A 4 MiB file system: the step-4 checkpoint (2.5 MB) fits, the step-8 one does not. Every
    rank stops within seconds with one line; step 4 stays the newest checkpoint; with room again,
    the requeued run ends where the uninterrupted one did, to the last bit."""
    small = tmp_path / "small"
    _mount_tmpfs(small, "4m")
    try:
        run = small / "run"
        args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 8, "--save-every": 4})
        start = time.monotonic()
        result = launch(args, nproc=2, timeout=240)
        elapsed = time.monotonic() - start
        assert result.returncode != 0 and "exitcode  : 4" in result.stderr, result.stderr[-3000:]
        assert "was not saved (rank" in result.stdout, result.stdout[-3000:]
        assert "No space left" in result.stdout, result.stdout[-3000:]
        assert "The last good checkpoint is" in result.stdout and "global_step4" in result.stdout
        assert elapsed < 120  # the old code waited in a barrier for the 30-minute timeout
        assert [p.name for p in (run / "checkpoints").glob("global_step*")] == ["global_step4"]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        check_ok(launch(args, nproc=2))
        assert losses(run) == losses(reference_run)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_failed_universal_conversion_stops_every_rank_at_once(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """Rank 0 converts; the old code left rank 1 in a barrier for the 30-minute timeout."""
    run = tmp_path / "run"
    extra = {"--max-steps": 4, "--save-every": 2}
    check_ok(launch(base_args(tiny_teacher, small_data_dir, run, **extra), nproc=1))
    # Something that is not ours where the conversion writes: it fails, and is left alone.
    blocker = run / "checkpoints" / "global_step4_universal.tmp"
    blocker.write_text("not a folder")
    start = time.monotonic()
    result = launch(base_args(tiny_teacher, small_data_dir, run, **{**extra, "--max-steps": 6}),
                    nproc=2, timeout=240)  # fmt: skip
    assert result.returncode != 0 and time.monotonic() - start < 120
    assert "rank 0 failed: RuntimeError: converting" in result.stderr, result.stderr[-3000:]


def test_token_ids_beyond_the_vocabulary_are_one_line(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """On a GPU an id past the embedding table is a device-side assert that kills the process."""
    data = tmp_path / "data"
    shutil.copytree(small_data_dir, data)
    manifest = json.loads((data / "manifest.json").read_text())
    prefix = data / manifest["splits"]["train"]["shards"][0]["path"]
    reader = IndexedReader(prefix)
    raw = bytearray(bin_path(prefix).read_bytes())
    for pointer in reader.pointers.tolist():  # the 2nd token of every sequence of the shard
        raw[pointer + 2 : pointer + 4] = (60000).to_bytes(2, "little")
    bin_path(prefix).write_bytes(bytes(raw))
    result = launch(
        base_args(tiny_teacher, data, tmp_path / "run", **{"--data.verify_checksums": "false"}),
        launcher="python",
    )
    assert result.returncode == 2
    error = _one_error(result, "pipeline.train")
    assert "token id 60000" in error and str(bin_path(prefix)) in error
    assert "data_prep.verify" in error


def test_a_flipped_byte_in_a_shard_is_caught_before_training(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_data_dir, data)
    manifest = json.loads((data / "manifest.json").read_text())
    prefix = data / manifest["splits"]["train"]["shards"][-1]["path"]
    raw = bytearray(bin_path(prefix).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a token id that is still in the vocabulary
    bin_path(prefix).write_bytes(bytes(raw))
    result = launch(base_args(tiny_teacher, data, tmp_path / "run"), nproc=2)
    assert result.returncode != 0  # torchrun's own code for a rank that exited with 2
    error = _one_error(result, "pipeline.train")
    assert "sha256" in error and str(bin_path(prefix)) in error


def test_hub_ids_are_resolved_once_for_the_whole_job(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """Two "nodes": node 0 sees the hub cache, node 1 an empty one (a burst of per-rank hub
    calls that failed there). Rank 0 resolves the ID; every rank loads that one snapshot."""
    cache, empty = tmp_path / "hub", tmp_path / "empty"
    empty.mkdir()
    snapshot = publish(tiny_teacher, cache, "distil-test/tiny-bert")
    run = tmp_path / "run"
    args = base_args(Path("distil-test/tiny-bert"), small_data_dir, run, **{"--max-steps": 2})
    port = _free_port()
    results = run_nodes(
        [torchrun_node(i, "127.0.0.1", port, args) for i in (0, 1)],
        envs=[offline_env(cache), offline_env(empty)],
    )
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    resolved: dict[str, Any] = json.loads(json.dumps(_resolved(run)))
    assert resolved["teacher"]["name"] == "distil-test/tiny-bert"
    assert resolved["teacher"]["revision"] == snapshot.name
    commit = json.loads((run / "checkpoints" / "global_step2" / "COMMIT.json").read_text())
    assert commit["identity"]["hub_revision"] == snapshot.name


def _resolved(run: Path) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((run / "config.yaml").read_text())["resolved"])
