"""Every launcher gives the same run: torchrun, the deepspeed launcher, mpirun, two torchrun
"nodes" on loopback (slow: four 2-rank runs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline_helpers import REPO, base_args, check_ok, launch, losses


@pytest.mark.slow
def test_launchers_give_identical_losses(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """torchrun, the deepspeed launcher, mpirun and two torchrun "nodes" on loopback."""
    import subprocess

    from pipeline_helpers import _free_port, train_env

    runs = {}
    for name, kwargs in {
        "torchrun": {"launcher": "torchrun"},
        "deepspeed": {"launcher": "deepspeed"},
        "mpirun": {"launcher": "mpirun"},
    }.items():
        runs[name] = tmp_path / name
        check_ok(
            launch(
                base_args(tiny_teacher, small_data_dir, runs[name], **{"--max-steps": 4}),
                nproc=2,
                **kwargs,
            )
        )
    runs["two_nodes"] = tmp_path / "two_nodes"
    port = str(_free_port())
    args = base_args(tiny_teacher, small_data_dir, runs["two_nodes"], **{"--max-steps": 4})
    procs = [
        subprocess.Popen(
            [str(Path(os.sys.executable).parent / "torchrun"), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port, "-m", "pipeline.train", *args],
            cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    reference = losses(runs["torchrun"])
    assert len(reference) == 4
    for name, run in runs.items():
        assert losses(run) == reference, name
