"""What the losses need from the teacher, from the teacher beside the engine or from its cache.

:class:`TeacherTargets` holds the teacher's outputs restricted to the rows the losses score.
:class:`TeacherSource` is the one interface the training step calls; :func:`teacher_source`
picks the implementation for a run:

* :class:`OnlineTeacher` runs the frozen teacher under ``inference_mode`` and computes only what
  the active losses need (logits at the scored rows, the last hidden state, the mapped layers);
* :class:`CachedTeacher` takes the logits the data-loader worker read from the teacher cache and,
  when a hidden-state loss is on, asks an :class:`OnlineTeacher` for the hidden states only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pipeline.batch import DeviceBatch, take_rows
from pipeline.config import LossConfig
from pipeline.models import MaskedLM


@dataclass
class TeacherTargets:
    """What the losses need from the teacher, already restricted to the rows they score."""

    logits: torch.Tensor | None = None  # [N, V] at the scored rows (online teacher)
    sparse_ids: torch.Tensor | None = None  # [N, K] (teacher cache)
    sparse_logp: torch.Tensor | None = None  # [N, K]
    last_hidden: torch.Tensor | None = None  # [P, H] at non-pad rows
    layers: list[torch.Tensor] | None = None  # M x [P, H]: teacher layer map(j) at non-pad rows


class TeacherSource(Protocol):
    def __call__(self, batch: DeviceBatch) -> TeacherTargets: ...


class OnlineTeacher:
    """The frozen teacher beside the engine (never inside it)."""

    def __init__(
        self, teacher: MaskedLM, loss: LossConfig, layer_map: list[int], logits: bool = True
    ) -> None:
        self.teacher = teacher
        self.loss = loss
        self.layer_map = layer_map
        self.logits = logits and loss.alpha_ce > 0

    def __call__(self, batch: DeviceBatch) -> TeacherTargets:
        loss = self.loss
        with torch.inference_mode():
            last, hidden = self.teacher.encode(
                batch.input_ids, batch.attention_mask, all_layers=loss.alpha_mse > 0
            )
            logits = self.teacher.head(take_rows(last, batch.rows)) if self.logits else None
            cos = take_rows(last, batch.pad_rows) if loss.alpha_cos > 0 else None
            layers = (
                [take_rows(hidden[t + 1], batch.pad_rows) for t in self.layer_map]
                if hidden is not None
                else None
            )
        # Inference tensors cannot be saved for backward: plain copies of the few rows we keep.
        return TeacherTargets(
            logits=logits.clone() if logits is not None else None,
            last_hidden=cos.clone() if cos is not None else None,
            layers=[h.clone() for h in layers] if layers is not None else None,
        )


class CachedTeacher:
    """Logits from the teacher cache; hidden states, if a loss wants them, from ``hidden``."""

    def __init__(self, hidden: OnlineTeacher | None) -> None:
        self.hidden = hidden

    def __call__(self, batch: DeviceBatch) -> TeacherTargets:
        if batch.cached_ids is None:
            raise RuntimeError("a teacher-cache run got a batch without cached targets")
        targets = self.hidden(batch) if self.hidden is not None else TeacherTargets()
        targets.sparse_ids, targets.sparse_logp = batch.cached_ids, batch.cached_logp
        return targets


def teacher_source(
    teacher: MaskedLM | None, loss: LossConfig, layer_map: list[int], cached: bool
) -> TeacherSource | None:
    """The source of a run's teacher targets; None for MLM-only training (or no teacher loss)."""
    online = OnlineTeacher(teacher, loss, layer_map, logits=not cached) if teacher else None
    if cached:
        return CachedTeacher(online)
    return online
