"""Masked-LM models: loading a teacher or an MLM model, and a uniform adapter over their families.

* Teacher: any local Hugging Face masked-LM folder, loaded with ``AutoModelForMaskedLM``; cast by
  :func:`teacher_dtype` (fp16 on GPU, fp32 on CPU by default).
* :class:`MaskedLM` gives every family the same two calls: ``encode`` (hidden states) and
  ``head`` (MLM logits of selected rows only), so no (batch x seq x vocab) tensor is ever built.
* :func:`check_model_fits`: a model's vocabulary and positions against the data's.
* :class:`Shape`: the sizes a student may change (layers, width, heads, FFN).
The student derived from a teacher is :mod:`pipeline.model.student`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_prep.errors import UserError
from data_prep.families import SUPPORTED_MODEL_TYPES
from data_prep.manifest import DataManifest

# model_type -> (attribute of the encoder inside the *ForMaskedLM model, prefix of MLM-head keys)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bert": ("bert", ("cls.",)),
    "distilbert": ("distilbert", ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.bias")),
    "roberta": ("roberta", ("lm_head.",)),
    "xlm-roberta": ("roberta", ("lm_head.",)),
    "camembert": ("roberta", ("lm_head.",)),
}
# data_prep (which never imports pipeline) refuses other families before tokenizing: one list.
assert tuple(FAMILIES) == SUPPORTED_MODEL_TYPES, "add the family to data_prep/families.py too"


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def teacher_dtype_name(name: str, device: torch.device) -> str:
    """The teacher's dtype: ``auto`` is fp16 on a GPU and fp32 on a CPU, where fp16 does not run."""
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError("teacher dtype fp16 does not run on a CPU; use bf16 or fp32 (or auto)")
    if name not in DTYPES:
        raise UserError(f"teacher dtype {name!r}: use auto, fp16, bf16 or fp32")
    return name


def teacher_dtype(name: str, device: torch.device) -> torch.dtype:
    return DTYPES[teacher_dtype_name(name, device)]


def check_model_fits(config: Any, manifest: DataManifest, what: str) -> None:
    """Refuse a model whose vocabulary or positions cannot hold the data of ``manifest``."""
    vocab = int(getattr(config, "vocab_size", 0))
    if vocab < manifest.vocab_size:
        raise UserError(
            f"{what}: vocabulary of {vocab} is smaller than the data's {manifest.vocab_size}; the data was built with another tokenizer"
        )
    max_pos = int(getattr(config, "max_position_embeddings", 10**9))
    if manifest.seq_len > max_pos:
        raise UserError(
            f"{what}: max_position_embeddings {max_pos} < the data's seq_len {manifest.seq_len}; rebuild the data with --seq-len {max_pos}"
        )


def model_family(model: nn.Module) -> str:
    kind = getattr(model.config, "model_type", "")
    if kind not in FAMILIES:
        raise UserError(
            f"model type '{kind}' is not supported yet (supported: {', '.join(FAMILIES)})"
        )
    return str(kind)


def num_layers(config: Any) -> int:
    return int(getattr(config, "num_hidden_layers", None) or config.n_layers)


_DIMS = (
    ("num_hidden_layers", "n_layers"),
    ("hidden_size", "dim"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "hidden_dim"),
)


def model_dims(config: Any) -> tuple[int, int, int, int]:
    """(layers, hidden size, attention heads, FFN size) of a BERT-family or DistilBERT config
    (a config object or its dict); 0 for what it does not say."""
    raw = config if isinstance(config, dict) else config.to_dict()
    dims = [int(raw.get(bert) or raw.get(distil) or 0) for bert, distil in _DIMS]
    return dims[0], dims[1], dims[2], dims[3]


@dataclass(frozen=True)
class Shape:
    """The sizes of a BERT-family encoder that a student may change."""

    layers: int
    hidden: int
    heads: int
    intermediate: int

    @staticmethod
    def of(config: Any) -> Shape:
        return Shape(*model_dims(config))

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads


class MaskedLM(nn.Module):
    """A Hugging Face masked LM seen through two calls: ``encode`` and ``head``."""

    def __init__(self, model: nn.Module, has_head: bool = True) -> None:
        super().__init__()
        self.model = model
        self.family = model_family(model)
        self.encoder_attr = FAMILIES[self.family][0]
        self.has_head = has_head  # False: an encoder checkpoint with a fresh, untrained MLM head

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

    def qkv(self, layer: int) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The query, key and value projections (``nn.Linear``) of ``layer``: their outputs, [B, S, H]
        with the heads side by side, are what the attention losses read (by forward hooks)."""
        m: Any = self.model
        if self.family == "distilbert":
            att = m.distilbert.transformer.layer[layer].attention
            return att.q_lin, att.k_lin, att.v_lin
        att = getattr(m, self.encoder_attr).encoder.layer[layer].attention.self
        return att.query, att.key, att.value

    def projections_out(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """The attention output projection (its input: the heads' outputs side by side) and the
        FFN's second matrix (its input: the FFN activations) of ``layer``."""
        m: Any = self.model
        if self.family == "distilbert":
            block = m.distilbert.transformer.layer[layer]
            return block.attention.out_lin, block.ffn.lin2
        block = getattr(m, self.encoder_attr).encoder.layer[layer]
        return block.attention.output.dense, block.output.dense

    def residual_norms(self) -> list[nn.LayerNorm]:
        """Every LayerNorm of the encoder over the residual width (embeddings' and each layer's)."""
        width = model_dims(self.model.config)[1]
        encoder = getattr(self.model, self.encoder_attr)
        return [
            m
            for m in encoder.modules()
            if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (width,)
        ]

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
    return MaskedLM(model, has_head=not head_missing)


def set_dropout(cfg: Any, dropout: float | None) -> None:
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
    set_dropout(cfg, dropout)
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
