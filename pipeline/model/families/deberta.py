"""DeBERTa-v2 and -v3 (``model_type`` deberta-v2): BERT's layout with disentangled attention.

Attention scores add relative-position terms (content-to-position and position-to-content,
through the shared ``rel_embeddings``) to the content dot product, so the TinyBERT attention
loss, which recomputes scores from Q and K, would not match the model's: it is refused with a
pointer to MiniLMv2's relations (``loss.alpha_relation``), which are defined on Q/K/V alone.
transformers runs DeBERTa with its own attention kernel only (no SDPA). Its Q and K projections
run twice per layer (on the tokens, then on the relative-position embeddings); the capture keeps
the first, the tokens'.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.model.families.base import Family, QKVSource, Rule, only, rules
from pipeline.model.families.roberta import BERT_ENCODER_RULES

DEBERTA_RULES = rules([(r"rel_embeddings\.weight$", "", "R"), *BERT_ENCODER_RULES])


class Deberta(Family):
    name = "deberta-v2"
    model_types = ("deberta-v2",)
    encoder_attr = "deberta"
    head_prefixes = ("cls.", "lm_predictions.")
    tied_head_keys = ("decoder.weight",)
    sdpa = False
    attention_refusal = (
        "DeBERTa's attention adds relative-position terms to the Q-K scores, which the "
        "attention loss does not compute: set loss.alpha_attn 0 and distil attention with "
        "loss.alpha_relation (MiniLMv2 Q/K/V relations)"
    )

    def qkv_sources(self, model: Any, layer: int) -> list[QKVSource]:
        att = self.layers(model)[layer].attention.self
        return [(att.query_proj, only("q")), (att.key_proj, only("k")), (att.value_proj, only("v"))]

    def normalises_tokens(self, name: str) -> bool:
        return name != "encoder.LayerNorm"  # the relative-position embeddings' norm

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        m: Any = model
        if hasattr(m, "cls"):
            return m.cls(hidden)
        return m.lm_predictions.lm_head(hidden, m.deberta.embeddings.word_embeddings)

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        return DEBERTA_RULES


FAMILY = Deberta()
