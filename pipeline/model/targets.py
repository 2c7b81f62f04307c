"""What the losses need from the teacher, from the teacher beside the engine or from its cache.

:class:`TeacherTargets` holds the teacher's outputs restricted to what the losses score.
:class:`TeacherSource` is the one interface the training step calls; :func:`teacher_source`
picks the implementation for a run:

* :class:`OnlineTeacher` runs the frozen teacher under ``inference_mode`` and computes only what
  the active losses need: logits at the scored rows, the last hidden state, the mapped layers
  (and the embeddings, for TinyBERT), and, from Q/K/V captured by hooks at the distilled layers
  only (:mod:`pipeline.model.alignment`), TinyBERT's attention targets and MiniLMv2's relations;
* :class:`CachedTeacher` takes the logits the data-loader worker read from the teacher cache and,
  when a loss on the teacher's internals is on, asks an :class:`OnlineTeacher` for those: the
  cache carries logits only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pipeline.config.schema import LossConfig
from pipeline.data.batch import DeviceBatch, take_rows
from pipeline.model.alignment import Alignment, capture_qkv, qkv_layers_teacher
from pipeline.model.losses import attention_target, relation_probs
from pipeline.model.masked_lm import MaskedLM


@dataclass
class TeacherTargets:
    """What the losses need from the teacher, already restricted to the rows they score."""

    logits: torch.Tensor | None = None  # [N, V] at the scored rows (online teacher)
    sparse_ids: torch.Tensor | None = None  # [N, K] (teacher cache)
    sparse_logp: torch.Tensor | None = None  # [N, K]
    last_hidden: torch.Tensor | None = None  # [P, H] at non-pad rows
    layers: list[torch.Tensor] | None = None  # M x [P, H]: teacher layer map(j) at non-pad rows
    hidden: list[torch.Tensor] | None = None  # 1 + M x [P, H]: embeddings, then layer map(j)
    attention: list[torch.Tensor] | None = None  # M x [B, h_S, S, S]: attention_target of map(j)
    relations: list[torch.Tensor] | None = None  # Q-Q, K-K, V-V: [B, R, S, S] probabilities


class TeacherSource(Protocol):
    def __call__(self, batch: DeviceBatch) -> TeacherTargets: ...


def _valid(batch: DeviceBatch) -> torch.Tensor | None:
    return None if batch.attention_mask is None else batch.attention_mask.bool()


class OnlineTeacher:
    """The frozen teacher beside the engine (never inside)."""

    def __init__(
        self,
        teacher: MaskedLM,
        loss: LossConfig,
        alignment: Alignment,
        logits: bool = True,
    ) -> None:
        self.teacher = teacher
        self.loss = loss
        self.al = alignment
        self.logits = logits and loss.alpha_ce > 0
        self.qkv_layers = qkv_layers_teacher(loss, alignment)

    def __call__(self, batch: DeviceBatch) -> TeacherTargets:
        loss, al = self.loss, self.al
        all_layers = loss.alpha_mse > 0 or loss.alpha_hidden > 0
        with torch.inference_mode(), capture_qkv(self.teacher, self.qkv_layers) as cap:
            last, states = self.teacher.encode(
                batch.input_ids, batch.attention_mask, all_layers=all_layers
            )
            logits = self.teacher.head(take_rows(last, batch.rows)) if self.logits else None
            cos = take_rows(last, batch.pad_rows) if loss.alpha_cos > 0 else None
            picks = [0] if loss.alpha_hidden > 0 else []  # 0: the embeddings' output
            picks += [t + 1 for t in al.layer_map]
            hidden = (
                [take_rows(states[i], batch.pad_rows) for i in picks]
                if states is not None
                else None
            )
        # Inference tensors cannot be saved for backward: plain copies of the few rows we keep.
        qkv = {key: x.clone() for key, x in cap.out.items()}
        out = TeacherTargets(
            logits=logits.clone() if logits is not None else None,
            last_hidden=cos.clone() if cos is not None else None,
        )
        if hidden is not None:
            hidden = [h.clone() for h in hidden]
            out.hidden = hidden if loss.alpha_hidden > 0 else None
            out.layers = hidden[-len(al.layer_map) :] if loss.alpha_mse > 0 else None
        valid = _valid(batch)
        with torch.no_grad():
            if loss.alpha_attn > 0:
                out.attention = [
                    attention_target(
                        qkv[t, "q"],
                        qkv[t, "k"],
                        al.teacher.heads,
                        al.attention_groups,
                        loss.attn_target,
                        valid,
                    )
                    for t in al.layer_map
                ]
            if loss.alpha_relation > 0:
                t = al.relation_layers[0]
                out.relations = [relation_probs(qkv[t, x], al.relation_heads, valid) for x in "qkv"]
        return out


class CachedTeacher:
    """Logits from the teacher cache; the teacher's internals, if a loss wants them, from
    ``online`` (the cache carries logits only)."""

    def __init__(self, online: OnlineTeacher | None) -> None:
        self.online = online

    def __call__(self, batch: DeviceBatch) -> TeacherTargets:
        if batch.cached_ids is None:
            raise RuntimeError("a teacher-cache run got a batch without cached targets")
        targets = self.online(batch) if self.online is not None else TeacherTargets()
        targets.sparse_ids, targets.sparse_logp = batch.cached_ids, batch.cached_logp
        return targets


def teacher_source(
    teacher: MaskedLM | None, loss: LossConfig, alignment: Alignment | None, cached: bool
) -> TeacherSource | None:
    """The source of a run's teacher targets; None for MLM-only training (or no teacher loss)."""
    online = None
    if teacher is not None:
        assert alignment is not None  # prepare() resolves one whenever there is a teacher
        online = OnlineTeacher(teacher, loss, alignment, logits=not cached)
    if cached:
        return CachedTeacher(online)
    return online
