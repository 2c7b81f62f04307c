"""The module inside the DeepSpeed engine: the student, the weighted sum of its losses, and the
few parameters the losses themselves learn.

:class:`StudentWithLoss` holds the student and, when the TinyBERT hidden-state loss is on, its
two learned projections (student width -> teacher width: ``projections.embed`` for the
embeddings, ``projections.hidden`` shared by the layers: TinyBERT's W_e and W_h). Being parameters of the engine's
module they are trained, checkpointed and resumed with the student (ZeRO shards, universal
checkpoints), but they are not part of the student: export takes only the keys under
:data:`STUDENT_PREFIX` (:func:`student_weights`). The teacher's outputs come in as
:class:`~pipeline.model.targets.TeacherTargets`, computed outside the engine. The student's Q/K/V at
the distilled layers are read by hooks for the one forward (:func:`~pipeline.model.alignment.capture_qkv`).

Terms (metric keys, in metrics.jsonl and TensorBoard ``train/<key>``): ``ce``, ``mlm``, ``cos``,
``mse`` (DistilBERT); ``hid`` and ``att`` (TinyBERT); ``rel`` = ``rel_qq`` + ``rel_kk`` +
``rel_vv`` (MiniLMv2); ``loss``, their weighted sum.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config.schema import LossConfig
from pipeline.data.batch import DeviceBatch, take_rows
from pipeline.data.masking import IGNORE_INDEX
from pipeline.model.alignment import (
    Alignment,
    capture_qkv,
    init_projection,
    projection_shapes,
    qkv_layers_student,
)
from pipeline.model.losses import (
    attention_loss,
    cosine_loss,
    hidden_mse_loss,
    kd_loss,
    layer_sum_mse,
    mlm_loss,
    relation_kl,
    sparse_kd_loss,
)
from pipeline.model.masked_lm import MaskedLM
from pipeline.model.targets import TeacherTargets


class StudentWithLoss(nn.Module):
    """The student and the weighted sum of the losses; the only module inside the engine."""

    def __init__(
        self,
        student: MaskedLM,
        loss: LossConfig,
        alignment: Alignment | None,
        distilling: bool,
    ) -> None:
        super().__init__()
        self.student = student
        self.cfg = loss
        self.alignment = alignment
        self.distilling = distilling
        self.qkv_layers = (
            qkv_layers_student(loss, alignment) if distilling and alignment is not None else {}
        )
        self.projections = nn.ModuleDict()
        for name, (out_features, in_features) in projection_shapes(loss, alignment).items():
            linear = nn.Linear(in_features, out_features)
            init_projection(linear, alignment.residual if alignment else None)
            self.projections[name] = linear

    def forward(
        self, batch: DeviceBatch, targets: TeacherTargets | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        rows, pad_rows = batch.rows, batch.pad_rows
        need_layers = self.distilling and (cfg.alpha_mse > 0 or cfg.alpha_hidden > 0)
        with capture_qkv(self.student, self.qkv_layers) as qkv:
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
            valid = None if batch.attention_mask is None else batch.attention_mask.bool()
            if cfg.alpha_hidden > 0:
                assert hidden is not None and targets.hidden is not None
                rows_h = [take_rows(h, pad_rows) for h in hidden]
                w_e, w_h = self.projections["embed"], self.projections["hidden"]
                projected = [w_e(rows_h[0])] + [w_h(h) for h in rows_h[1:]]
                terms["hid"] = layer_sum_mse(projected, targets.hidden)
                total = total + cfg.alpha_hidden * terms["hid"]
            al = self.alignment
            if cfg.alpha_attn > 0:
                assert al is not None and targets.attention is not None
                terms["att"] = sum(  # type: ignore[assignment]
                    attention_loss(
                        qkv[j, "q"], qkv[j, "k"], al.student.heads, target, cfg.attn_target, valid
                    )
                    for j, target in enumerate(targets.attention)
                )
                total = total + cfg.alpha_attn * terms["att"]
            if cfg.alpha_relation > 0:
                assert al is not None and targets.relations is not None
                j = al.relation_layers[1]
                for x, target in zip("qkv", targets.relations, strict=True):
                    terms[f"rel_{x}{x}"] = relation_kl(qkv[j, x], target, al.relation_heads, valid)
                terms["rel"] = terms["rel_qq"] + terms["rel_kk"] + terms["rel_vv"]
                total = total + cfg.alpha_relation * terms["rel"]
        terms["loss"] = total
        return total, {k: v.detach() for k, v in terms.items()}


STUDENT_PREFIX = "student.model."
"""Where the student's Hugging Face weights sit in the engine module's state dict: the attribute
``student`` of :class:`StudentWithLoss`, then ``model`` of :class:`MaskedLM` (tested). The
projections (``projections.*``) sit beside it, so export leaves them out."""


def student_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's Hugging Face state dict out of the engine module's (an engine checkpoint's)."""
    return {k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
