"""The module inside the DeepSpeed engine: the student and the weighted sum of its losses.

:class:`StudentWithLoss` holds the student alone; the teacher's outputs come in as
:class:`~pipeline.targets.TeacherTargets`, computed outside the engine. Its state-dict keys put the
student's Hugging Face weights under :data:`STUDENT_PREFIX`; :func:`student_weights` takes them
back out of an engine checkpoint (for export), whatever else the module holds.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.batch import DeviceBatch, take_rows
from pipeline.config import LossConfig
from pipeline.losses import cosine_loss, hidden_mse_loss, kd_loss, mlm_loss, sparse_kd_loss
from pipeline.masking import IGNORE_INDEX
from pipeline.models import MaskedLM
from pipeline.targets import TeacherTargets


class StudentWithLoss(nn.Module):
    """The student and the weighted sum of the losses; the only module inside the engine."""

    def __init__(
        self, student: MaskedLM, loss: LossConfig, layer_map: list[int], distilling: bool
    ) -> None:
        super().__init__()
        self.student = student
        self.cfg = loss
        self.layer_map = layer_map
        self.distilling = distilling

    def forward(
        self, batch: DeviceBatch, targets: TeacherTargets | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        rows, pad_rows = batch.rows, batch.pad_rows
        need_layers = self.distilling and cfg.alpha_mse > 0
        last, hidden = self.student.encode(
            batch.input_ids, batch.attention_mask, all_layers=need_layers
        )
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=last.device, dtype=torch.float32)
        logits = self.student.head(take_rows(last, rows))
        scored_labels = batch.labels.reshape(-1).index_select(0, rows)
        if cfg.alpha_mlm > 0 or not self.distilling:
            masked = scored_labels != IGNORE_INDEX
            terms["mlm"] = (
                mlm_loss(logits[masked], scored_labels[masked])
                if cfg.ce_positions == "all"
                else mlm_loss(logits, scored_labels)
            )
            total = total + (cfg.alpha_mlm if self.distilling else 1.0) * terms["mlm"]
        if self.distilling and targets is not None:
            if cfg.alpha_ce > 0:
                if targets.logits is not None:
                    terms["ce"] = kd_loss(logits, targets.logits, cfg.temperature)
                else:
                    assert targets.sparse_ids is not None and targets.sparse_logp is not None
                    terms["ce"] = sparse_kd_loss(
                        logits, targets.sparse_ids, targets.sparse_logp, cfg.temperature
                    )
                total = total + cfg.alpha_ce * terms["ce"]
            if cfg.alpha_cos > 0:
                assert targets.last_hidden is not None
                terms["cos"] = cosine_loss(take_rows(last, pad_rows), targets.last_hidden)
                total = total + cfg.alpha_cos * terms["cos"]
            if cfg.alpha_mse > 0:
                assert hidden is not None and targets.layers is not None
                s_layers = [take_rows(h, pad_rows) for h in hidden[1:]]
                terms["mse"] = hidden_mse_loss(s_layers, targets.layers)
                total = total + cfg.alpha_mse * terms["mse"]
        terms["loss"] = total
        return total, {k: v.detach() for k, v in terms.items()}


STUDENT_PREFIX = "student.model."
"""Where the student's Hugging Face weights sit in the engine module's state dict: the attribute
``student`` of :class:`StudentWithLoss`, then ``model`` of :class:`MaskedLM` (tested)."""


def student_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's Hugging Face state dict out of the engine module's (an engine checkpoint's)."""
    return {k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
