"""RoBERTa and its relatives of the same class layout (XLM-R, CamemBERT): BERT's encoder, an
``lm_head``, and a student of the teacher's own class. ``BERT_LIKE_RULES`` (the selection rules
of the BERT encoder layout) are shared with ELECTRA and DeBERTa."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.model.families.base import Family, Rule, rules

BERT_ENCODER_RULES = [
    (r"(word|position|token_type)_embeddings\.weight$", "", "R"),
    (r"(LayerNorm|layer_norm)\.(weight|bias)$", "R", ""),
    (r"self\.(query|key|value)(_proj)?\.weight$", "A", "R"),
    (r"self\.(query|key|value)(_proj)?\.bias$", "A", ""),
    (r"attention\.output\.dense\.weight$", "R", "A"),
    (r"intermediate\.dense\.weight$", "F", "R"),
    (r"intermediate\.dense\.bias$", "F", ""),
    (r"\.output\.dense\.weight$", "R", "F"),
    (r"(lm_head|predictions\.transform)\.dense\.weight$", "R", "R"),
    (r"\.dense\.bias$", "R", ""),
    (r"(lm_head|lm_head\.decoder|predictions|predictions\.decoder)\.bias$", "", ""),
    (r"decoder\.weight$", "", "R"),
]
BERT_LIKE_RULES = rules(BERT_ENCODER_RULES)


class Roberta(Family):
    name = "roberta"
    model_types = ("roberta", "xlm-roberta", "camembert")
    encoder_attr = "roberta"
    head_prefixes = ("lm_head.",)
    tied_head_keys = ("decoder.weight",)

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        return model.lm_head(hidden)

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        return BERT_LIKE_RULES


FAMILY = Roberta()
