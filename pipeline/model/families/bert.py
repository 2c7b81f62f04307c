"""BERT, and its student: a ``DistilBertForMaskedLM`` (no token-type embeddings, no pooler).

The BERT teacher adds token-type embedding 0 to every token; DistilBERT has none, so the student
folds it into the position embeddings and its embedding layer computes exactly the teacher's.
The student's keys are DistilBERT's, so the selection rules here are DistilBERT's too.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.model.families.base import Family, Rule
from pipeline.model.families.distilbert import DISTILBERT_RULES

# DistilBERT name inside a layer -> BERT name
_LAYER_NAMES = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}


class Bert(Family):
    name = "bert"
    model_types = ("bert",)
    encoder_attr = "bert"
    head_prefixes = ("cls.",)
    tied_head_keys = ("decoder.weight", "vocab_projector.weight")
    token_type_ids = True

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        return model.cls(hidden)

    def student_config(
        self,
        teacher_config: Any,
        layers: int,
        hidden: int,
        heads: int,
        ffn: int,
        layer_map: list[int],
    ) -> Any:
        from transformers import DistilBertConfig

        tc = teacher_config
        return DistilBertConfig(
            vocab_size=tc.vocab_size,
            max_position_embeddings=tc.max_position_embeddings,
            sinusoidal_pos_embds=False,
            n_layers=layers,
            n_heads=heads,
            dim=hidden,
            hidden_dim=ffn,
            dropout=tc.hidden_dropout_prob,
            attention_dropout=tc.attention_probs_dropout_prob,
            activation=tc.hidden_act,
            initializer_range=tc.initializer_range,
            pad_token_id=tc.pad_token_id if tc.pad_token_id is not None else 0,
            tie_word_embeddings=True,
        )

    def student_state(
        self, state: dict[str, torch.Tensor], layer_map: list[int]
    ) -> dict[str, torch.Tensor]:
        t = state
        out = {
            "distilbert.embeddings.word_embeddings.weight": t[
                "bert.embeddings.word_embeddings.weight"
            ],
            "distilbert.embeddings.position_embeddings.weight": t[
                "bert.embeddings.position_embeddings.weight"
            ]
            + t["bert.embeddings.token_type_embeddings.weight"][0],
            "distilbert.embeddings.LayerNorm.weight": t["bert.embeddings.LayerNorm.weight"],
            "distilbert.embeddings.LayerNorm.bias": t["bert.embeddings.LayerNorm.bias"],
            "vocab_transform.weight": t["cls.predictions.transform.dense.weight"],
            "vocab_transform.bias": t["cls.predictions.transform.dense.bias"],
            "vocab_layer_norm.weight": t["cls.predictions.transform.LayerNorm.weight"],
            "vocab_layer_norm.bias": t["cls.predictions.transform.LayerNorm.bias"],
            "vocab_projector.bias": t["cls.predictions.bias"]
            if "cls.predictions.bias" in t
            else t["cls.predictions.decoder.bias"],
        }
        for s_layer, t_layer in enumerate(layer_map):
            for s_name, t_name in _LAYER_NAMES.items():
                for p in ("weight", "bias"):
                    out[f"distilbert.transformer.layer.{s_layer}.{s_name}.{p}"] = t[
                        f"bert.encoder.layer.{t_layer}.{t_name}.{p}"
                    ]
        return out

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        return DISTILBERT_RULES


FAMILY = Bert()
