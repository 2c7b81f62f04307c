"""Which launcher started us, and the process group: torchrun, deepspeed, srun, mpirun or none.

Ranks come from the launcher's variables: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun and the
deepspeed launcher), ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` inside an ``srun`` step, or
``OMPI_COMM_WORLD_*`` / ``PMI_*`` under ``mpirun``. The rendezvous address is ``MASTER_ADDR`` /
``MASTER_PORT`` when set; otherwise the first node of the Slurm step with a port derived from
the job id, or, under MPI, rank 0's address broadcast with mpi4py. A plain ``python -m`` is
one rank on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch

from data_prep.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slurm_first_host() -> str:
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def _mpi_rendezvous(rank: int) -> tuple[str, int]:
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError(
            "mpirun detected but mpi4py is not installed: pip install 'distil[mpi]', or set MASTER_ADDR and MASTER_PORT"
        ) from None
    comm = MPI.COMM_WORLD
    hosts = comm.allgather(socket.gethostname())
    if rank == 0:
        addr = "127.0.0.1" if len(set(hosts)) == 1 else socket.gethostbyname(socket.gethostname())
        found: tuple[str, int] | None = (addr, _free_port())
    else:
        found = None
    result: tuple[str, int] = comm.bcast(found, root=0)
    return result


def detect() -> DistEnv:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
        launcher = "torchrun/deepspeed"
    elif "OMPI_COMM_WORLD_RANK" in env or "PMI_RANK" in env:
        prefix = "OMPI_COMM_WORLD_" if "OMPI_COMM_WORLD_RANK" in env else "PMI_"
        rank, world = int(env[f"{prefix}RANK"]), int(env[f"{prefix}SIZE"])
        local = int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", env.get("MPI_LOCALRANKID", rank)))
        launcher = "mpirun"
    elif "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        rank, world = (
            int(env["SLURM_PROCID"]),
            int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))),
        )
        local = int(env.get("SLURM_LOCALID", "0"))
        launcher = "srun"
    else:
        return DistEnv(
            0,
            1,
            0,
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", 0)) or _free_port(),
            "single",
        )
    if "MASTER_ADDR" in env and "MASTER_PORT" in env:
        addr, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    elif launcher == "srun":
        addr = env.get("MASTER_ADDR") or _slurm_first_host()
        port = int(env.get("MASTER_PORT", 0)) or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
    elif launcher == "mpirun" and world > 1:
        addr, port = _mpi_rendezvous(rank)
    else:
        addr, port = "127.0.0.1", _free_port()
    return DistEnv(rank, world, local, addr, port, launcher)


def device_for(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        torch.cuda.set_device(env.local_rank % count)
        return torch.device("cuda", env.local_rank % count)
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device, timeout_s: int = 1800) -> None:
    """Start DeepSpeed's process group: NCCL on GPUs, gloo on CPUs."""
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )
    import deepspeed

    if device.type == "cpu":
        # The shared-memory comm op is a 40-70 s JIT compile that training does not need.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(
        dist_backend="nccl" if device.type == "cuda" else "gloo",
        auto_mpi_discovery=False,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
