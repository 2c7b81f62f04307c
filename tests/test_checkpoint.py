"""The checkpoint format without an engine: what counts as complete or damaged, which one a resume
takes, contradicting identities, one line of history, retention in commit order. (Saving and
resuming for real: test_integration_resume.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from data_prep.errors import UserError
from pipeline.checkpoint import store as ckpt
from pipeline.checkpoint.history import prune, start_line
from pipeline.checkpoint.manager import CheckpointManager
from pipeline.config.schema import TrainConfig
from pipeline.distributed.comm import ControlGroup


def _fake(
    run: Path, step: int, commit: bool = True, index: int | None = None, **identity: Any
) -> Path:
    path = ckpt.checkpoint_root(run) / ckpt.tag_for(step)
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"x" * 10)
    if commit:
        digest = hashlib.sha256(b"x" * 10).hexdigest()
        body = {"step": step, "consumed_samples": step * 8, "world_size": 2,
                "identity": identity, "files": {"model.pt": {"bytes": 10, "sha256": digest}}}  # fmt: skip
        if index is not None:
            body["commit_index"] = index
        (path / ckpt.COMMIT).write_text(json.dumps(body))
    return path


def test_resume_takes_the_newest_complete_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert ckpt.find_resume(run, "auto") is None
    _fake(run, 4)
    _fake(run, 8)
    _fake(run, 12, commit=False)  # a save that never finished
    truncated = _fake(run, 10)
    (truncated / "model.pt").write_bytes(b"x")
    found = ckpt.find_resume(run, "auto")
    warned = capsys.readouterr().err
    assert "skipping incomplete checkpoint" in warned and "global_step12" in warned
    assert "model.pt is 1 bytes, 10 were written" in warned
    assert found is not None and found.step == 8 and found.world_size == 2
    assert ckpt.find_resume(run, "none") is None
    assert ckpt.find_resume(run, str(run / "checkpoints" / "global_step4")).step == 4  # type: ignore[union-attr]
    with pytest.raises(UserError, match=r"not a complete checkpoint .*model.pt is 1 bytes"):
        ckpt.find_resume(run, str(truncated))


def test_a_contradicting_identity_is_refused(tmp_path: Path) -> None:
    found = ckpt.read_checkpoint(_fake(tmp_path, 4, layer_map=[0, 3], student={"n_layers": 2}))
    ckpt.check_compatible(found, {"layer_map": [0, 3], "student": {"n_layers": 2}})
    with pytest.raises(UserError) as exc:
        ckpt.check_compatible(found, {"layer_map": [0, 2], "student": {"n_layers": 3}})
    assert "layer_map ([0, 3] -> [0, 2]); student (n_layers) differ" in str(exc.value)


def test_a_flipped_byte_is_found_by_the_checksum_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake(tmp_path, 4)
    damaged = _fake(tmp_path, 8)
    (damaged / "model.pt").write_bytes(b"x" * 9 + b"y")  # same size: only the checksum sees it
    found = ckpt.find_resume(tmp_path, "auto")
    assert found is not None and found.step == 4
    assert "skipping damaged checkpoint" in capsys.readouterr().err
    assert ckpt.find_resume(tmp_path, "auto", verify=False).step == 8  # type: ignore[union-attr]
    with pytest.raises(UserError, match="does not match its sha256"):
        ckpt.find_resume(tmp_path, str(damaged))


def test_prune_keeps_the_last_commits_and_drops_stale_partials(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        _fake(tmp_path, step)
    _fake(tmp_path, 3, commit=False)  # older than the newest complete one: stale
    _fake(tmp_path, 7, commit=False)  # newer: another save may be writing it
    prune(tmp_path, keep_last=2)
    left = sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir())
    assert left == ["global_step4", "global_step6", "global_step7"]


def test_prune_follows_commit_order_not_step_numbers(tmp_path: Path) -> None:
    """Steps 8 and 10 committed first, then a line that restarted at step 2: the newest commits
    are kept (the old code kept the highest steps and deleted the new checkpoint at once)."""
    _fake(tmp_path, 8, index=1)
    _fake(tmp_path, 10, index=2)
    _fake(tmp_path, 2, index=3)
    _fake(tmp_path, 4, index=4)
    prune(tmp_path, keep_last=2)
    left = sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir())
    assert left == ["global_step2", "global_step4"]
    assert ckpt.find_resume(tmp_path, "auto").step == 4  # type: ignore[union-attr]


def test_resume_none_over_checkpoints_is_refused(tmp_path: Path) -> None:
    start_line(tmp_path, "none", None, print)  # an empty run folder: fine
    _fake(tmp_path, 8)
    with pytest.raises(UserError, match="holds checkpoints up to step 8: --resume none"):
        start_line(tmp_path, "none", None, print)
    start_line(tmp_path, "auto", ckpt.find_resume(tmp_path, "auto"), print)  # continuing: fine


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path: Path) -> None:
    for step in (4, 8, 10):
        _fake(tmp_path, step)
    (ckpt.checkpoint_root(tmp_path) / "global_step10_universal").mkdir()
    said: list[str] = []
    older = ckpt.find_resume(tmp_path, str(ckpt.checkpoint_root(tmp_path) / "global_step4"))
    start_line(tmp_path, str(older.path), older, said.append)  # type: ignore[union-attr]
    root = ckpt.checkpoint_root(tmp_path)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["global_step4"]
    (aside,) = root.glob("set-aside-*")
    assert sorted(p.name for p in aside.iterdir()) == [
        "WHY.txt", "global_step10", "global_step10_universal", "global_step8"
    ]  # fmt: skip
    assert ckpt.problem(aside / "global_step10") is None  # kept whole
    assert "steps 8, 10" in said[0] and str(aside) in said[0]
    assert ckpt.find_resume(tmp_path, "auto").step == 4  # type: ignore[union-attr]


def test_a_checkpoint_is_due_every_save_every_steps_and_at_the_end(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, TrainConfig(save_every=5), {}, ControlGroup(), 0, print)
    assert [s for s in range(1, 13) if manager.due(s, final=False)] == [5, 10]
    assert manager.due(7, final=True)
    never = CheckpointManager(tmp_path, TrainConfig(save_every=0), {}, ControlGroup(), 0, print)
    assert not never.due(5, final=False) and never.due(5, final=True)
    assert never.last_good() == "(none)"


def test_each_file_of_a_checkpoint_is_synced_by_the_rank_that_wrote_it(
    reference_run: Path,
) -> None:
    names = [f.name for f in (reference_run / "checkpoints" / "global_step8").iterdir()]
    owners = {name: ckpt.owner_of(name) for name in names}
    assert {n for n, r in owners.items() if r == 1} == {
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "distil_rank00001.pt",
    }, owners
    assert set(owners.values()) == {0, 1}  # W + 2 fsyncs per save, each file once


def test_fused_adam_steps_move_to_their_parameters_device() -> None:
    """DeepSpeed's universal loader leaves a CPU step beside CUDA parameters; torch's fused AdamW
    wants it on the parameter's device. (The meta device stands in for CUDA here.)"""
    import torch

    from pipeline.checkpoint.manager import place_optimizer_steps

    param = torch.nn.Parameter(torch.empty(4, device="meta"))
    opt = torch.optim.AdamW([param], fused=True)
    opt.state[param]["step"] = torch.tensor(7.0)  # as load_hp_checkpoint_state leaves it
    assert place_optimizer_steps(opt) == 1
    assert opt.state[param]["step"].device.type == "meta"
    assert opt.state[param]["step"].dtype == torch.float32
    assert place_optimizer_steps(opt) == 0
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.empty(2, device="meta"))], fused=False)
    assert place_optimizer_steps(plain) == 0  # non-fused steps stay on the CPU, as torch keeps them
