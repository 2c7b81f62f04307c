"""The student derived from a teacher: its shape, its layer map, its initialisation.

* Student of a BERT teacher: ``DistilBertForMaskedLM`` (no token-type embeddings, no pooler) with
  the teacher's hidden size, heads and FFN, and ``student_layers`` layers initialised from the
  teacher layers ``layer_map`` (default 12 -> 6: 0, 2, 4, 7, 9, 11, as in the DistilBERT release),
  the embeddings and the MLM head. BERT adds token-type embedding 0 to every token; we fold it
  into the position embeddings so the student's embedding layer computes exactly the teacher's.
* Student of a RoBERTa-style or DistilBERT teacher: the teacher's own class with fewer layers.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from data_prep.errors import UserError
from pipeline.models import MaskedLM, model_family, set_dropout

_LAYER_KEY = re.compile(r"\.layer\.(\d+)\.")


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spread teacher layers, first and last included (12 -> 6 gives 0,2,4,7,9,11)."""
    if not 1 <= student_layers <= teacher_layers:
        raise UserError(
            f"a student of {student_layers} layers cannot be mapped onto a {teacher_layers}-layer teacher"
        )
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def _student_config(teacher: Any, layers: int, dropout: float | None) -> Any:
    from transformers import DistilBertConfig

    tc = teacher.config
    if model_family(teacher) == "bert":
        cfg = DistilBertConfig(
            vocab_size=tc.vocab_size,
            max_position_embeddings=tc.max_position_embeddings,
            sinusoidal_pos_embds=False,
            n_layers=layers,
            n_heads=tc.num_attention_heads,
            dim=tc.hidden_size,
            hidden_dim=tc.intermediate_size,
            dropout=tc.hidden_dropout_prob if dropout is None else dropout,
            attention_dropout=tc.attention_probs_dropout_prob if dropout is None else dropout,
            activation=tc.hidden_act,
            initializer_range=tc.initializer_range,
            pad_token_id=tc.pad_token_id if tc.pad_token_id is not None else 0,
            tie_word_embeddings=True,
        )
        return cfg
    cfg = type(tc).from_dict(tc.to_dict())
    if hasattr(cfg, "num_hidden_layers"):
        cfg.num_hidden_layers = layers
    else:
        cfg.n_layers = layers
    set_dropout(cfg, dropout)
    return cfg


def _bert_to_distilbert(t: dict[str, torch.Tensor], layer_map: list[int]) -> dict[str, Any]:
    out = {
        "distilbert.embeddings.word_embeddings.weight": t["bert.embeddings.word_embeddings.weight"],
        # BERT adds token-type embedding 0 to every token; DistilBERT has none: fold it in.
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
        "vocab_projector.bias": t.get(
            "cls.predictions.bias", t.get("cls.predictions.decoder.bias")
        ),
    }
    names = {
        "attention.q_lin": "attention.self.query",
        "attention.k_lin": "attention.self.key",
        "attention.v_lin": "attention.self.value",
        "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm",
        "ffn.lin1": "intermediate.dense",
        "ffn.lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for s_layer, t_layer in enumerate(layer_map):
        for s_name, t_name in names.items():
            for p in ("weight", "bias"):
                out[f"distilbert.transformer.layer.{s_layer}.{s_name}.{p}"] = t[
                    f"bert.encoder.layer.{t_layer}.{t_name}.{p}"
                ]
    return out


def _renumber_layers(t: dict[str, torch.Tensor], layer_map: list[int]) -> dict[str, torch.Tensor]:
    inverse: dict[int, list[int]] = {}
    for s_layer, t_layer in enumerate(layer_map):
        inverse.setdefault(t_layer, []).append(s_layer)
    out: dict[str, torch.Tensor] = {}
    for key, value in t.items():
        match = _LAYER_KEY.search(key)
        if match is None:
            out[key] = value
            continue
        for s_layer in inverse.get(int(match.group(1)), []):
            out[key[: match.start()] + f".layer.{s_layer}." + key[match.end() :]] = value
    return out


def build_student(
    teacher: MaskedLM,
    layers: int,
    layer_map: list[int] | None,
    init: str,
    attn: str,
    dropout: float | None,
) -> tuple[MaskedLM, list[int]]:
    """The student and its layer map; with ``init='teacher'`` its weights come from the teacher."""
    from transformers import AutoModelForMaskedLM

    t_layers = teacher.num_layers
    layers = layers or max(1, t_layers // 2)
    layer_map = list(layer_map) if layer_map else default_layer_map(t_layers, layers)
    if len(layer_map) != layers or not all(0 <= i < t_layers for i in layer_map):
        raise UserError(
            f"model.layer_map {layer_map} must list {layers} teacher layers in 0..{t_layers - 1}"
        )
    cfg = _student_config(teacher.model, layers, dropout)
    cfg._attn_implementation = attn
    torch.manual_seed(0)  # random init is reproducible whatever ran before
    student = AutoModelForMaskedLM.from_config(cfg, attn_implementation=attn)
    if init == "teacher":
        t_state = {k: v.detach().float() for k, v in teacher.model.state_dict().items()}
        if teacher.family == "bert":
            state = _bert_to_distilbert(t_state, layer_map)
        else:
            state = _renumber_layers(t_state, layer_map)
        result = student.load_state_dict(state, strict=False)
        unexpected = [k for k in result.unexpected_keys if "position_ids" not in k]
        missing = [
            k
            for k in result.missing_keys
            if not k.endswith(("vocab_projector.weight", "decoder.weight", "position_ids"))
        ]
        if unexpected or missing:
            raise RuntimeError(
                f"student init from teacher: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        student.tie_weights()
    return MaskedLM(student), layer_map
