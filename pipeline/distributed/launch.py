"""Which launcher started this process, where its ranks meet, and process start-up settings.

Ranks come from the launcher's variables: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun and the
deepspeed launcher), ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` inside an ``srun`` step, or
``OMPI_COMM_WORLD_*`` / ``PMI_*`` under ``mpirun``. The rendezvous address is ``MASTER_ADDR`` /
``MASTER_PORT`` when set; otherwise the first node of the Slurm step with :func:`slurm_port` of
the job id, or, under MPI, rank 0's routable address broadcast with mpi4py. A plain ``python -m``
is one rank on 127.0.0.1.

Real hosts: Debian maps a host's own name to 127.0.1.1, and gloo binds to whatever the host name
resolves to, so across nodes it would bind to loopback. :func:`gloo_interface` names the interface
that reaches MASTER_ADDR instead (``GLOO_SOCKET_IFNAME``, when the user has not set it), and the
mpirun rendezvous announces :func:`routable_address`, never the host name's address.

Nothing here imports torch, so ``slurm/env.sh`` can ask quickly for the port the trainer would
derive (``python -m pipeline.distributed.slurm_port JOB_ID``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import warnings
from dataclasses import dataclass
from typing import Literal

from data_prep.errors import UserError

Launcher = Literal["torchrun/deepspeed", "mpirun", "srun", "single"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: Launcher

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def slurm_port(job_id: int) -> int:
    """The rendezvous port of a Slurm job: the same after a requeue, distinct for jobs that
    share a node, and below Linux's ephemeral range (32768-60999), where a port can be taken by
    any outgoing connection. The one formula; ``slurm/env.sh`` calls it."""
    return 12000 + job_id % 20000


def _ipv4_of(ifname: str) -> str | None:
    """The IPv4 address of a network interface (SIOCGIFADDR), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = struct.pack("256s", ifname[:15].encode())
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, packed)[20:24])
        except OSError:
            return None


def _interface_of(address: str) -> str | None:
    for _, name in socket.if_nameindex():
        if _ipv4_of(name) == address:
            return name
    return None


def _resolve(host: str) -> str | None:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def _loopback(address: str | None) -> bool:
    return address is None or ipaddress.ip_address(address).is_loopback


def local_address_towards(peer: str) -> str | None:
    """This host's source address for packets to ``peer`` (a routing lookup: nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((peer, 9))
            return str(s.getsockname()[0])
        except OSError:
            return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def own_interface() -> str | None:
    """The interface other hosts reach this one by: the default route's, else the only one with
    a routable IPv4 address (compute nodes often have no default route). None when unknown."""
    via_default = local_address_towards("192.0.2.1")  # TEST-NET-1: any route
    if via_default and not _loopback(via_default):
        return _interface_of(via_default)
    routable = [
        name
        for _, name in socket.if_nameindex()
        if (address := _ipv4_of(name)) is not None and not _loopback(address)
    ]
    return routable[0] if len(routable) == 1 else None


def gloo_interface(master_addr: str) -> str | None:
    """The interface gloo must bind to for ranks on other hosts to reach this one. None when
    nothing needs setting: GLOO_SOCKET_IFNAME is the user's, or every rank is on this host
    (MASTER_ADDR is a loopback address or ``localhost``).

    Elsewhere: the interface that routes to MASTER_ADDR. On the master node itself, when
    MASTER_ADDR is its own host name (what ``slurm/env.sh`` sets) and that name resolves to
    127.0.1.1 (Debian's /etc/hosts), the other nodes reach it by the name's real address: the
    interface of this host's routable address (:func:`own_interface`)."""
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return None
    master = _resolve(master_addr)
    if master is None:
        return None
    if _loopback(master):
        if _is_ip(master_addr) or master_addr == "localhost":
            return None
        return own_interface()
    local = local_address_towards(master)
    return _interface_of(local) if local else None


def routable_address() -> str:
    """An address of this host that other hosts can reach: GLOO_SOCKET_IFNAME's, else the host
    name's when it is not loopback, else the address of :func:`own_interface`."""
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "").split(",")[0]
    if ifname and (address := _ipv4_of(ifname)):
        return address
    own = _resolve(socket.gethostname())
    if own is not None and not _loopback(own):
        return own
    interface = own_interface()
    return (_ipv4_of(interface) if interface else None) or own or "127.0.0.1"


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
        addr = "127.0.0.1" if len(set(hosts)) == 1 else routable_address()
        found: tuple[str, int] | None = (addr, _free_port())
    else:
        found = None
    result: tuple[str, int] = comm.bcast(found, root=0)
    return result


def detect() -> DistEnv:
    env = os.environ
    launcher: Launcher
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
        port = int(env.get("MASTER_PORT", 0)) or slurm_port(int(env.get("SLURM_JOB_ID", "0")))
    elif launcher == "mpirun" and world > 1:
        addr, port = _mpi_rendezvous(rank)
    else:
        addr, port = "127.0.0.1", _free_port()
    return DistEnv(rank, world, local, addr, port, launcher)


def quiet_libraries() -> None:
    """What every entry point that loads models sets first: no tokenizer threads (parallelism comes
    from ranks and workers), DeepSpeed's accelerator named, no library warnings or progress bars."""
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
