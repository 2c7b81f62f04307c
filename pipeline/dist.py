"""The process group, the rank's device, and the control group for CPU-side agreement.

DeepSpeed's default group is NCCL on GPUs and gloo on CPUs. The trainer's decisions (stop, skip,
save) are small CPU flags: :class:`ControlGroup` reduces them on a gloo group of its own when the
default group is NCCL, so they never synchronise the GPU, and on the default group otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from data_prep.errors import UserError
from pipeline.launch import DistEnv

T = TypeVar("T")


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


class ControlGroup:
    """Agreement between ranks on CPU values; a world of one without a process group.

    Collective: every rank constructs it, and every rank calls each method in the same order.
    """

    def __init__(self, timeout_s: float | None = None) -> None:
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.group = None
        if self.world > 1 and (dist.get_backend() != "gloo" or timeout_s is not None):
            timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
            self.group = dist.new_group(backend="gloo", timeout=timeout)

    def reduce(self, values: torch.Tensor, op: str = "SUM") -> torch.Tensor:
        """All-reduce a CPU tensor in place (``op``: SUM, MAX, MIN) and return it."""
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

    def together(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank, then agree: if it raised on any rank, every rank stops (the
        failing one with its own error), instead of the others waiting for it forever."""
        failed: BaseException | None = None
        result: T | None = None
        try:
            result = fn()
        except BaseException as exc:
            failed = exc
        any_failed = self.any(failed is not None)
        if failed is not None:
            raise failed
        if any_failed:
            raise UserError(
                "another rank failed (its error is in the log); fix it and rerun the same command"
            )
        return result  # type: ignore[return-value]
