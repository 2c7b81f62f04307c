"""A micro-batch on its device, and the rows the losses score.

Losses never build a (batch x seq x vocab) tensor: the hidden states are flattened to rows and
only the rows a loss needs are taken (:func:`take_rows`): the masked positions (or every non-pad
position) for the logit losses (:func:`scored_rows`), the non-pad positions for the hidden-state
losses (:func:`nonpad_rows`, None when nothing is padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.data.masking import IGNORE_INDEX


def scored_rows(labels: torch.Tensor, attention_mask: torch.Tensor, positions: str) -> torch.Tensor:
    """Flat indices of the rows the logit losses score: masked ones, or every non-pad one."""
    keep = (
        labels.reshape(-1) != IGNORE_INDEX
        if positions == "masked"
        else attention_mask.reshape(-1).bool()
    )
    return keep.nonzero().squeeze(-1)


def nonpad_rows(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Flat indices of non-pad rows, or None when nothing is padded (all rows count)."""
    flat = attention_mask.reshape(-1).bool()
    if bool(flat.all()):
        return None
    return flat.nonzero().squeeze(-1)


def take_rows(hidden: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat if rows is None else flat.index_select(0, rows)


@dataclass
class DeviceBatch:
    """One micro-batch, moved to the rank's device, with its row indices."""

    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor | None  # [B, S]; None when nothing is padded
    labels: torch.Tensor  # [B, S], IGNORE_INDEX where not masked
    rows: torch.Tensor  # scored rows (flat indices)
    pad_rows: torch.Tensor | None  # non-pad rows; None = all
    tokens: int  # non-pad tokens
    cached_ids: torch.Tensor | None = None  # [len(rows), K] teacher cache targets, if any
    cached_logp: torch.Tensor | None = None  # [len(rows), K]


def to_device(batch: dict[str, torch.Tensor], device: torch.device, positions: str) -> DeviceBatch:
    """Rows are found on the CPU (no device sync), then everything moves without blocking."""
    attn_cpu = batch["attention_mask"]
    rows_cpu = scored_rows(batch["labels"], attn_cpu, positions)
    pad_cpu = nonpad_rows(attn_cpu)
    nb = device.type == "cuda"
    out = DeviceBatch(
        input_ids=batch["input_ids"].to(device, non_blocking=nb),
        attention_mask=None if pad_cpu is None else attn_cpu.to(device, non_blocking=nb),
        labels=batch["labels"].to(device, non_blocking=nb),
        rows=rows_cpu.to(device, non_blocking=nb),
        pad_rows=None if pad_cpu is None else pad_cpu.to(device, non_blocking=nb),
        tokens=int(attn_cpu.sum()),
    )
    if "teacher_ids" in batch:  # read from the teacher cache by the data-loader worker
        if batch["teacher_ids"].shape[0] != rows_cpu.numel():
            raise ValueError("teacher cache rows are not the scored rows (ce_positions 'all'?)")
        out.cached_ids = batch["teacher_ids"].to(device, non_blocking=nb)
        out.cached_logp = batch["teacher_logp"].to(device, non_blocking=nb)
    return out
