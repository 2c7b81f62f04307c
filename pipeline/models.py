"""Teacher and student models: loading, the student derived from the teacher, a uniform adapter.

* Teacher: any local Hugging Face masked-LM folder, loaded with ``AutoModelForMaskedLM``.
* Student of a BERT teacher: ``DistilBertForMaskedLM`` (no token-type embeddings, no pooler) with
  the teacher's hidden size, heads and FFN, and ``student_layers`` layers initialised from the
  teacher layers ``layer_map`` (default 12 -> 6: 0, 2, 4, 7, 9, 11, as in the DistilBERT release),
  the embeddings and the MLM head. BERT adds token-type embedding 0 to every token; we fold it
  into the position embeddings so the student's embedding layer computes exactly the teacher's.
* Student of a RoBERTa-style or DistilBERT teacher: the teacher's own class with fewer layers.
* :class:`MaskedLM` gives every family the same two calls: ``encode`` (hidden states) and
  ``head`` (MLM logits of selected rows only), so no (batch x seq x vocab) tensor is ever built.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_prep.errors import UserError

# model_type -> (attribute of the encoder inside the *ForMaskedLM model, prefix of MLM-head keys)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bert": ("bert", ("cls.",)),
    "distilbert": ("distilbert", ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.bias")),
    "roberta": ("roberta", ("lm_head.",)),
    "xlm-roberta": ("roberta", ("lm_head.",)),
    "camembert": ("roberta", ("lm_head.",)),
}
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


def model_family(model: nn.Module) -> str:
    kind = getattr(model.config, "model_type", "")
    if kind not in FAMILIES:
        raise UserError(
            f"model type '{kind}' is not supported yet (supported: {', '.join(FAMILIES)})"
        )
    return str(kind)


def num_layers(config: Any) -> int:
    return int(getattr(config, "num_hidden_layers", None) or config.n_layers)


class MaskedLM(nn.Module):
    """A Hugging Face masked LM seen through two calls: ``encode`` and ``head``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.family = model_family(model)
        self.encoder_attr = FAMILIES[self.family][0]

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return num_layers(self.model.config)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, all_layers: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Last hidden state, and with ``all_layers`` the embeddings output + every layer's."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if all_layers:
            kwargs["output_hidden_states"] = True
        if self.family == "bert":
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        out = getattr(self.model, self.encoder_attr)(**kwargs)
        return out.last_hidden_state, (out.hidden_states if all_layers else None)

    def compile_encoder(self) -> None:
        """torch.compile the encoder: the bulk of the FLOPs, on batches of (almost always) one shape.

        The LM head is left eager: it sees a different number of masked rows every step.
        """
        getattr(self.model, self.encoder_attr).compile()

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """MLM logits of the given rows of hidden states (any leading shape)."""
        m: Any = self.model
        if self.family == "bert":
            return m.cls(hidden)
        if self.family == "distilbert":
            h = m.vocab_layer_norm(m.activation(m.vocab_transform(hidden)))
            return m.vocab_projector(h)
        return m.lm_head(hidden)


def _from_pretrained(path: str, attn: str, dtype: torch.dtype) -> tuple[nn.Module, list[str]]:
    from transformers import AutoModelForMaskedLM

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise UserError(f"{folder}: no weights (*.safetensors or pytorch_model.bin) in this folder")
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(folder), dtype=dtype, attn_implementation=attn, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{folder}: transformers cannot load this masked LM ({str(exc).splitlines()[0]})"
        ) from None
    return model, sorted(info.get("missing_keys", []))


def load_teacher(path: str, attn: str, need_head: bool) -> MaskedLM:
    """The teacher in fp32 on the CPU (cast and moved by the caller), eval, no grad."""
    model, missing = _from_pretrained(path, attn, torch.float32)
    family = model_family(model)
    head_prefixes = FAMILIES[family][1]
    head_missing = [
        k
        for k in missing
        if k.startswith(head_prefixes)
        and not k.endswith(("decoder.weight", "vocab_projector.weight"))
    ]
    if need_head and head_missing:
        raise UserError(
            f"{path}: the masked-LM head weights are missing ({', '.join(head_missing[:3])}...): this is an "
            "encoder checkpoint, not a masked LM. The logit loss needs the head: use a *ForMaskedLM "
            "checkpoint, pretrain one with MLM first, or set loss.alpha_ce 0 and loss.alpha_mlm 0"
        )
    model.eval().requires_grad_(False)
    return MaskedLM(model)


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
    _set_dropout(cfg, dropout)
    return cfg


def _set_dropout(cfg: Any, dropout: float | None) -> None:
    """Override every dropout rate a BERT-family config has (None: keep the config's)."""
    if dropout is None:
        return
    for name in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "dropout",
        "attention_dropout",
    ):
        if hasattr(cfg, name):
            setattr(cfg, name, dropout)


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


def load_mlm_model(spec: str, attn: str, dropout: float | None) -> MaskedLM:
    """The model of MLM-only training: an HF folder (weights used when present) or a config.json."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    path = Path(spec)
    if path.is_dir() and any(path.glob("*.safetensors")):
        model, _ = _from_pretrained(spec, attn, torch.float32)
        return MaskedLM(model)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise UserError(f"--model {spec}: expected a config.json or a Hugging Face model folder")
    try:
        raw = json.loads(config_file.read_text())
        cfg = AutoConfig.for_model(**raw)
    except (ValueError, KeyError) as exc:
        raise UserError(f"{config_file}: not a transformers model config ({exc})") from None
    _set_dropout(cfg, dropout)
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(cfg, attn_implementation=attn)
    model_family(model)
    return MaskedLM(model)


SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "dim",
    "n_layers",
    "n_heads",
    "hidden_dim",
)


def model_shape(config: Any) -> dict[str, Any]:
    """The config fields that decide the shapes of the weights (what a checkpoint must match)."""
    d = config.to_dict()
    return {k: d[k] for k in SHAPE_KEYS if k in d}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
