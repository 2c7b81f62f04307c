"""DistilBERT: the student of a BERT teacher, and a teacher of its own (students of its class)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.model.families.base import Family, QKVSource, Rule, only, rules

DISTILBERT_RULES = rules(
    [
        (r"(word|position)_embeddings\.weight$", "", "R"),
        (r"(LayerNorm|layer_norm)\.(weight|bias)$", "R", ""),
        (r"(q_lin|k_lin|v_lin)\.weight$", "A", "R"),
        (r"(q_lin|k_lin|v_lin)\.bias$", "A", ""),
        (r"out_lin\.weight$", "R", "A"),
        (r"ffn\.lin1\.weight$", "F", "R"),
        (r"ffn\.lin1\.bias$", "F", ""),
        (r"ffn\.lin2\.weight$", "R", "F"),
        (r"vocab_transform\.weight$", "R", "R"),
        (r"(out_lin|ffn\.lin2|vocab_transform)\.bias$", "R", ""),
        (r"vocab_projector\.bias$", "", ""),
        (r"vocab_projector\.weight$", "", "R"),
    ]
)


class DistilBert(Family):
    name = "distilbert"
    model_types = ("distilbert",)
    encoder_attr = "distilbert"
    head_prefixes = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.bias")
    tied_head_keys = ("vocab_projector.weight",)

    def layers(self, model: Any) -> Any:
        return model.distilbert.transformer.layer

    def qkv_sources(self, model: Any, layer: int) -> list[QKVSource]:
        att = self.layers(model)[layer].attention
        return [(att.q_lin, only("q")), (att.k_lin, only("k")), (att.v_lin, only("v"))]

    def projections_out(self, model: Any, layer: int) -> tuple[nn.Module, nn.Module]:
        block = self.layers(model)[layer]
        return block.attention.out_lin, block.ffn.lin2

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        m: Any = model
        return m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(hidden))))

    def student_config(
        self,
        teacher_config: Any,
        layers: int,
        hidden: int,
        heads: int,
        ffn: int,
        layer_map: list[int],
    ) -> Any:
        raw = teacher_config.to_dict()
        raw.update(n_layers=layers, dim=hidden, n_heads=heads, hidden_dim=ffn)
        return type(teacher_config).from_dict(raw)

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        return DISTILBERT_RULES


FAMILY = DistilBert()
