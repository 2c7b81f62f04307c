"""The DeepSpeed JSON: loaded, checked against the run's config, and completed from it.

The JSON carries engine settings (ZeRO stage, buckets, overlap, precision). Batch sizes, gradient
clipping, optimizer and schedule belong to the config: in the JSON they are ``"auto"`` or absent,
and a concrete value that disagrees is an error naming the key and the fix, never a silent
override. The global batch ``B`` is fixed by the config; ``micro x grad_accum x world_size = B``
is derived here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.errors import UserError
from pipeline.config.schema import Config


@dataclass(frozen=True)
class EngineSettings:
    config: dict[str, Any]
    micro_batch: int
    grad_accum: int
    precision: str  # fp16 | bf16 | fp32


SHIPPED = Path(__file__).resolve().parents[2] / "ds_configs"
"""The DeepSpeed configs shipped with distil (the repository's ds_configs/)."""


def find_ds_config(spec: str | Path) -> Path:
    """``train.ds_config``: the path as given (from the working directory) when it exists, else
    the shipped config of that name (``zero2_bf16``, ``zero2_bf16.json`` or
    ``ds_configs/zero2_bf16.json``), so a job started from another directory finds it."""
    p = Path(spec)
    if p.is_file():
        return p
    if not p.is_absolute() and p.parent in (Path("."), Path("ds_configs")):
        for name in (p.name, f"{p.name}.json"):
            if (SHIPPED / name).is_file():
                return SHIPPED / name
    shipped = ", ".join(sorted(f.stem for f in SHIPPED.glob("*.json")))
    raise UserError(
        f"{p}: DeepSpeed config not found; give a JSON file or a shipped config's name ({shipped})"
    )


def load_json(path: str | Path) -> dict[str, Any]:
    p = find_ds_config(path)
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise UserError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a DeepSpeed config is a JSON object")
    return data


def split_batch(global_batch: int, world_size: int, micro: int, max_micro: int) -> tuple[int, int]:
    """(micro batch, grad accumulation) with micro x accum x world = global batch."""
    if global_batch % world_size:
        raise UserError(
            f"train.global_batch_size {global_batch} is not divisible by the world size {world_size}; "
            f"use a multiple of {world_size}"
        )
    per_rank = global_batch // world_size
    if micro == 0:
        micro = max(d for d in range(1, min(max_micro, per_rank) + 1) if per_rank % d == 0)
    elif per_rank % micro:
        options = [
            d for d in range(1, per_rank + 1) if per_rank % d == 0 and d <= 4 * max(micro, 1)
        ]
        raise UserError(
            f"global batch {global_batch} = micro {micro} x grad_accum x world {world_size} has no integer "
            f"solution; use --micro-batch-size in {options} or change --global-batch-size"
        )
    return micro, per_rank // micro


def _check(ds: dict[str, Any], key: str, want: Any, path: str, fix: str) -> None:
    have = ds.get(key, "auto")
    if have != "auto" and have != want:
        raise UserError(
            f'{path}: {key} is {have} but the config gives {want}; set it to "auto" (or remove it), or {fix}'
        )


def engine_settings(cfg: Config, world_size: int, device_type: str) -> EngineSettings:
    path = cfg.train.ds_config
    ds = copy.deepcopy(load_json(path))
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise UserError(
                f"{path}: remove the '{section}' section: the optimizer and LR schedule come from the "
                "config (optim.*), the single source of truth"
            )
    zero = ds.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    if stage not in (0, 1, 2):
        raise UserError(f"{path}: zero_optimization.stage {stage} is not supported; use stage 2")
    fp16 = bool(ds.get("fp16", {}).get("enabled", False))
    bf16 = bool(
        ds.get("bf16", {}).get("enabled", False) or ds.get("bfloat16", {}).get("enabled", False)
    )
    if fp16 and bf16:
        raise UserError(f"{path}: fp16 and bf16 are both enabled; enable one")
    if fp16 and device_type != "cuda":
        raise UserError(
            f"{path}: fp16 is asked for on a CPU, where it does not run; use ds_configs/zero2_bf16.json or zero2_fp32.json"
        )
    micro, accum = split_batch(
        cfg.train.global_batch_size,
        world_size,
        cfg.train.micro_batch_size,
        cfg.train.max_micro_batch,
    )
    _check(ds, "train_batch_size", cfg.train.global_batch_size, path, "change --global-batch-size")
    _check(ds, "train_micro_batch_size_per_gpu", micro, path, "pass --micro-batch-size to match")
    _check(ds, "gradient_accumulation_steps", accum, path, "pass --micro-batch-size to match")
    _check(ds, "gradient_clipping", cfg.optim.grad_clip, path, "set --optim.grad_clip to match")
    ds["train_batch_size"] = cfg.train.global_batch_size
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = accum
    ds["gradient_clipping"] = cfg.optim.grad_clip
    ds.setdefault("steps_per_print", 10**9)
    # Every rank saves the same tag by construction; DeepSpeed's own check is one more pair of
    # collectives inside save_checkpoint, which a rank whose disk is full would leave unmatched.
    ds.setdefault("checkpoint", {}).setdefault("tag_validation", "Ignore")
    precision = "fp16" if fp16 else "bf16" if bf16 else "fp32"
    return EngineSettings(ds, micro, accum, precision)
