"""Two "nodes" on one machine, each with what makes real nodes different: its own view of the
shared file system (a mount namespace), and its own host name, network and /etc/hosts (a network
and UTS namespace, the name mapped to 127.0.1.1 as Debian does). Needs root, unshare and ip."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import _free_port, base_args, losses, run_nodes, torchrun_node

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")),
    reason="needs root, unshare and ip (mount, network and UTS namespaces)",
)


def test_a_node_that_cannot_see_the_chosen_checkpoint_fails_the_job_in_one_line(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, reference_run: Path
) -> None:
    """Just after a requeue, node 1's view of the shared file system lags: it does not see the
    newest checkpoint yet. Rank 0 chooses for everyone; node 1 cannot read that one, so the whole
    job stops with one line per rank, instead of node 1 loading an older checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (tmp_path / "empty").mkdir()
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 12, "--save-every": 4})
    port = _free_port()
    hide = f"mount --bind {tmp_path / 'empty'} {run / 'checkpoints' / 'global_step8'}"
    node1 = ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f'{hide} && exec "$@"', "node1", *torchrun_node(1, "127.0.0.1", port, args)]  # fmt: skip
    results = run_nodes([torchrun_node(0, "127.0.0.1", port, args), node1])
    stderr = "".join(r.stderr for r in results)
    assert all(r.returncode != 0 for r in results), stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "pipeline.train: error:" in line]
    assert len(errors) == 2, stderr[-3000:]
    assert any("rank 1 cannot read the checkpoint rank 0 resumes from" in e for e in errors)
    assert any("global_step8" in e for e in errors)
    assert (run / "checkpoints" / "latest").read_text() == "global_step8"
    assert "/pipeline/" not in stderr  # no traceback through our code (torchrun adds its own)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[list[list[str]]]:
    """Two network namespaces joined by a veth pair (10.77.0.1, 10.77.0.2), each a "host" whose
    own name resolves to 127.0.1.1. Yields the command prefix that runs a command on host i."""
    tag = f"{os.getpid() % 10000}"
    ns = [f"distil{tag}a", f"distil{tag}b"]
    veth = [f"dv{tag}a", f"dv{tag}b"]
    setup = [
        ["ip", "netns", "add", ns[0]], ["ip", "netns", "add", ns[1]],
        ["ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]],
    ]  # fmt: skip
    for i in (0, 1):
        setup += [
            ["ip", "link", "set", veth[i], "netns", ns[i]],
            ["ip", "-n", ns[i], "addr", "add", f"10.77.0.{i + 1}/24", "dev", veth[i]],
            ["ip", "-n", ns[i], "link", "set", veth[i], "up"],
            ["ip", "-n", ns[i], "link", "set", "lo", "up"],
        ]
    try:
        for cmd in setup:
            subprocess.run(cmd, check=True, capture_output=True)
        prefixes = []
        for i in (0, 1):
            hosts = tmp_path / f"hosts{i}"
            # its own name on 127.0.1.1 (Debian), the other host's name on its real address
            other = 1 - i
            hosts.write_text(
                f"127.0.0.1 localhost\n127.0.1.1 node{i}\n10.77.0.{other + 1} node{other}\n"
            )
            script = f'mount --bind {hosts} /etc/hosts && hostname node{i} && exec "$@"'
            prefixes.append(["ip", "netns", "exec", ns[i], "unshare", "-m", "-u",
                             "--propagation", "private", "sh", "-c", script, f"node{i}"])  # fmt: skip
        yield prefixes
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.slow  # ~12 s: the host-name test below binds through the same path
def test_two_hosts_whose_names_resolve_to_loopback(
    two_hosts: list[list[str]], tmp_path: Path, tiny_teacher: Path, small_data_dir: Path,
    reference_run: Path,
) -> None:  # fmt: skip
    """gloo binds to what the host name resolves to: 127.0.1.1 on Debian, unreachable from the
    other node. The ranks bind to the interface that reaches MASTER_ADDR instead, and the run
    gives the losses of the same run on one host."""
    run = tmp_path / "run"
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 8, "--save-every": 4})
    results = run_nodes(
        [two_hosts[i] + torchrun_node(i, "10.77.0.1", 29500, args) for i in (0, 1)], timeout=300
    )
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert losses(run) == losses(reference_run)


def test_a_master_named_by_its_host_name_that_resolves_to_loopback(
    two_hosts: list[list[str]], tmp_path: Path, tiny_teacher: Path, small_data_dir: Path,
    reference_run: Path,
) -> None:  # fmt: skip
    """MASTER_ADDR as slurm/env.sh sets it: the first node's host name. On that node the name
    resolves to 127.0.1.1; the old code then bound gloo there and node 1 waited 30 minutes."""
    run = tmp_path / "run"
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 8, "--save-every": 4,
                     "--train.collective_timeout_s": 120})  # fmt: skip
    results = run_nodes(
        [two_hosts[i] + torchrun_node(i, "node0", 29500, args) for i in (0, 1)], timeout=300
    )
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert losses(run) == losses(reference_run)


def test_commit_lists_what_every_rank_wrote_even_files_rank_0_cannot_see(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """Node 1 writes its part of the checkpoint where node 0 cannot see it (a lagging shared file
    system, taken to the extreme). COMMIT.json still names it, with its size and sha256: it is
    built from what each rank reports, not from rank 0's listing of the folder."""
    run = tmp_path / "run"
    hidden = tmp_path / "node1_view"
    hidden.mkdir()
    (run / "checkpoints").mkdir(parents=True)
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 2, "--save-every": 2})
    port = _free_port()
    view = f"mount --bind {hidden} {run / 'checkpoints'}"
    node1 = ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f'{view} && exec "$@"', "node1", *torchrun_node(1, "127.0.0.1", port, args)]  # fmt: skip
    results = run_nodes([torchrun_node(0, "127.0.0.1", port, args), node1])
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    commit = json.loads((run / "checkpoints" / "global_step2" / "COMMIT.json").read_text())
    mine = {"zero_pp_rank_1_mp_rank_00_optim_states.pt", "distil_rank00001.pt"}
    assert mine <= set(commit["files"])
    for name in mine:
        assert not (run / "checkpoints" / "global_step2" / name).exists()
        written = hidden / "global_step2" / name
        assert commit["files"][name]["bytes"] == written.stat().st_size
        assert commit["files"][name]["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
