"""The collectives our code issues: only pipeline.distributed.comm issues them, each on the group it means
(CPU values on the gloo control group, device tensors on the default group), and the tests' NCCL
emulation catches a CPU tensor on the default group as NCCL would on a GPU node."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from pipeline_helpers import REPO, train_env

COLLECTIVES = {
    "all_reduce", "broadcast", "barrier", "reduce", "all_gather", "all_gather_object",
    "all_gather_into_tensor", "broadcast_object_list", "gather", "gather_object", "scatter",
    "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "send", "recv",
    "monitored_barrier",
}  # fmt: skip


def test_only_pipeline_distributed_comm_issues_collectives() -> None:
    offenders = []
    for path in sorted((REPO / "pipeline").rglob("*.py")) + sorted(
        (REPO / "data_prep").rglob("*.py")
    ):
        if path == REPO / "pipeline" / "distributed" / "comm.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in COLLECTIVES
                and isinstance(node.func.value, (ast.Name, ast.Attribute))
                and ast.unparse(node.func.value) in ("dist", "torch.distributed")
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node.func)}")
    assert not offenders, offenders


_PROBE = """
import os, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
code = "import torch, torch.distributed as dist\\ndef f(): dist.all_reduce(torch.ones(1))\\n"
for name in ("deepspeed.comm.fake", "pipeline.fake"):
    scope = {"__name__": name}
    exec(compile(code, name, "exec"), scope)
    try:
        scope["f"]()
        print(name, "ok")
    except RuntimeError as exc:
        print(name, "refused:", exc)
from pipeline.distributed.comm import ControlGroup, reduce_on_device
reduce_on_device(torch.ones(1))
print("reduce_on_device ok")
"""


def test_the_nccl_emulation_refuses_our_cpu_tensors_on_the_default_group() -> None:
    from pipeline_helpers import _free_port

    env = train_env({"PORT": str(_free_port())})
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "deepspeed.comm.fake ok" in lines  # not ours: passes, as DeepSpeed's do
    refused = [line for line in lines if line.startswith("pipeline.fake refused")]
    assert refused and "No backend type associated with device type cpu" in refused[0]
    assert "reduce_on_device ok" in lines


def test_one_visible_gpu_per_task_is_device_0_for_deepspeed_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--gpus-per-task=1: a task with SLURM_LOCALID 3 sees one GPU. The trainer and DeepSpeed
    (which calls set_device(LOCAL_RANK)) must both take cuda:0, not ordinal 3."""
    import deepspeed
    import torch

    from pipeline.distributed import comm as pdist
    from pipeline.distributed.launch import DistEnv

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    seen: dict[str, str] = {}
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: seen.update(os.environ))
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first: init_process_group writes these, and the undo must remove them again
        # (a RANK=3 left in this process's environment would hang every later 1-rank launch)
        monkeypatch.setenv(var, "")
    env = DistEnv(rank=3, world_size=8, local_rank=3, master_addr="127.0.0.1", master_port=1,
                  launcher="srun")  # fmt: skip
    device = pdist.device_for(env)
    pdist.init_process_group(env, device)
    assert device == torch.device("cuda", 0) and chosen == [0]
    assert seen["LOCAL_RANK"] == "0" and seen["RANK"] == "3"


def test_gloo_binds_to_the_interface_that_reaches_the_master(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host whose name resolves to 127.0.1.1 (Debian's default) must not make gloo bind to
    loopback when the master is on another host."""
    from pipeline.distributed import launch

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert launch.gloo_interface("127.0.0.1") is None  # every rank on this host
    own = launch.local_address_towards("192.0.2.1")
    if own is None or own.startswith("127."):
        pytest.skip("no non-loopback interface here")
    iface = launch.gloo_interface(own)  # the master is this host's routable address
    assert iface is not None and launch._ipv4_of(iface) == own
    monkeypatch.setattr(launch, "_resolve", lambda h: "127.0.1.1" if h == "node0" else h)
    monkeypatch.setattr(launch.socket, "gethostname", lambda: "node0")
    assert launch.routable_address() == own  # the mpirun rendezvous announces a reachable one
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    assert launch.gloo_interface(own) is None  # the user's choice stands
    assert launch.routable_address() == "127.0.0.1"


def test_no_launcher_variables_leak_into_this_process() -> None:
    """Runs after the tests above (file order): a RANK or WORLD_SIZE left in the test process's
    environment would make every later 1-rank launch wait for ranks that never come."""
    leaked = {v: os.environ[v] for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if v in os.environ}
    assert not leaked, leaked
