"""The process group, the rank's device, and every collective our code issues.

DeepSpeed's default group is NCCL on GPUs and gloo on CPUs. NCCL takes no CPU tensors, so each
collective names the group it means, and only this module issues them (a test checks):

* :class:`ControlGroup`: the trainer's decisions (stop, skip, save, which checkpoint) and other
  small CPU values, on a gloo group of its own (on GPU and CPU runs alike, so CPU tests exercise
  the same groups as GPU runs), never synchronising the GPU;
* :func:`reduce_on_device`: sums of device tensors (the logged losses) on the default group.

The rank's GPU is ``local_rank`` modulo the GPUs it sees (one, under ``--gpus-per-task=1``), and
that index is the ``LOCAL_RANK`` DeepSpeed is given, so both pick the same device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from data_prep.errors import UserError
from pipeline.distributed.launch import DistEnv, gloo_interface

T = TypeVar("T")


def device_for(env: DistEnv) -> torch.device:
    """The rank's device: GPU ``local_rank mod visible GPUs``, or the CPU."""
    if torch.cuda.is_available():
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device, timeout_s: int = 1800) -> None:
    """Start DeepSpeed's process group: NCCL on GPUs, gloo on CPUs."""
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        # DeepSpeed calls set_device(LOCAL_RANK): the device chosen here, not the launcher's index
        LOCAL_RANK=str(device.index if device.type == "cuda" else env.local_rank),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )
    if env.world_size > 1 and (interface := gloo_interface(env.master_addr)):
        os.environ["GLOO_SOCKET_IFNAME"] = interface
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


class ControlGroup:
    """Agreement between ranks on CPU values; a world of one without a process group.

    Collective: every rank constructs it, and every rank calls each method in the same order.
    """

    def __init__(self, timeout_s: float | None = None) -> None:
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.group = None
        if self.world > 1:
            timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
            self.group = dist.new_group(backend="gloo", timeout=timeout)

    def reduce(self, values: torch.Tensor, op: str = "SUM") -> torch.Tensor:
        """All-reduce a CPU tensor in place (``op``: SUM, MAX, MIN) and return it."""
        if values.device.type != "cpu":
            raise RuntimeError("ControlGroup reduces CPU values; use reduce_on_device")
        if self.world > 1:
            dist.all_reduce(values, op=getattr(dist.ReduceOp, op), group=self.group)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank's flag is set."""
        return bool(self.reduce(torch.tensor([int(flag)], dtype=torch.int64), "MAX").item())

    def all(self, flag: bool) -> bool:
        """True on every rank when every rank's flag is set."""
        return bool(self.reduce(torch.tensor([int(flag)], dtype=torch.int64), "MIN").item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[T | None] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out  # type: ignore[return-value]

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (a picklable Python object)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def together(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank, then agree: if it raised on any rank, every rank stops at
        once (the failing one with its own error, the others with one line naming the first
        failing rank and its cause), instead of the others waiting for it until a timeout."""
        failed: BaseException | None = None
        result: T | None = None
        try:
            result = fn()
        except BaseException as exc:
            failed = exc
        causes = self.gather(None if failed is None else one_line(failed))
        if failed is not None:
            raise failed
        bad = [(rank, cause) for rank, cause in enumerate(causes) if cause is not None]
        if bad:
            rank, cause = bad[0]
            raise UserError(f"rank {rank} failed: {cause}")
        return result  # type: ignore[return-value]


def one_line(exc: BaseException) -> str:
    """An exception as one line: a UserError's message, else its type and first line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(exc, UserError) else f"{type(exc).__name__}: {first}".rstrip(": ")


def release_peers() -> None:
    """Join the barrier on the default group that DeepSpeed's other ranks wait in after a
    collective call this rank left with an exception (a checkpoint save that failed here while
    the others finished): they go on, and every rank then agrees on the failure on the control
    group, instead of waiting for this one until the timeout."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def reduce_on_device(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor on the rank's device over the default group (NCCL on GPUs), in place."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        expected = "cuda" if dist.get_backend() == "nccl" else "cpu"
        if values.device.type != expected:
            raise RuntimeError(
                f"reduce_on_device: a {values.device.type} tensor on {expected} ranks"
            )
        dist.all_reduce(values)
    return values
