"""Two "nodes" on one machine, each with what makes real nodes different: its own view of the
shared file system (a mount namespace), and its own host name, network and /etc/hosts (a network
and UTS namespace, the name mapped to 127.0.1.1 as Debian does). Needs root, unshare and ip."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import REPO, VENV_BIN, _free_port, base_args, losses, train_env

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")),
    reason="needs root, unshare and ip (mount, network and UTS namespaces)",
)


def _torchrun_node(rank: int, master: str, port: int, args: list[str]) -> list[str]:
    return [
        str(VENV_BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(rank),
        "--nproc_per_node", "1", "--master_addr", master, "--master_port", str(port),
        "-m", "pipeline.train", *args,
    ]  # fmt: skip


def _run_nodes(cmds: list[list[str]], timeout: int = 240) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(
            c, cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in cmds
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


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
             f'{hide} && exec "$@"', "node1", *_torchrun_node(1, "127.0.0.1", port, args)]  # fmt: skip
    results = _run_nodes([_torchrun_node(0, "127.0.0.1", port, args), node1])
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
            hosts.write_text(f"127.0.0.1 localhost\n127.0.1.1 node{i}\n")
            script = f'mount --bind {hosts} /etc/hosts && hostname node{i} && exec "$@"'
            prefixes.append(["ip", "netns", "exec", ns[i], "unshare", "-m", "-u",
                             "--propagation", "private", "sh", "-c", script, f"node{i}"])  # fmt: skip
        yield prefixes
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_two_hosts_whose_names_resolve_to_loopback(
    two_hosts: list[list[str]], tmp_path: Path, tiny_teacher: Path, small_data_dir: Path,
    reference_run: Path,
) -> None:  # fmt: skip
    """gloo binds to what the host name resolves to: 127.0.1.1 on Debian, unreachable from the
    other node. The ranks bind to the interface that reaches MASTER_ADDR instead, and the run
    gives the losses of the same run on one host."""
    run = tmp_path / "run"
    args = base_args(tiny_teacher, small_data_dir, run, **{"--max-steps": 8, "--save-every": 4})
    results = _run_nodes(
        [two_hosts[i] + _torchrun_node(i, "10.77.0.1", 29500, args) for i in (0, 1)], timeout=300
    )
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert losses(run) == losses(reference_run)
