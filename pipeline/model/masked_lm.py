"""Masked-LM models: loading a teacher or an MLM model, and a uniform adapter over their families.

* Teacher: any local Hugging Face masked-LM folder, loaded with ``AutoModelForMaskedLM``; cast by
  :func:`teacher_dtype` (fp16 on GPU, fp32 on CPU by default).
* :class:`MaskedLM` gives every family (:mod:`pipeline.model.families`) the same two calls: ``encode`` (hidden states) and
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
from data_prep.manifest import DataManifest
from pipeline.model.families import FAMILIES, attn_implementation, family_of
from pipeline.model.families.base import Family, QKVSource

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
    """The ``model_type`` of ``model``, refused in one line when distil has no family for it."""
    kind = str(getattr(model.config, "model_type", ""))
    family_of(kind)
    return kind


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
    """A Hugging Face masked LM seen through two calls: ``encode`` and ``head``; what differs
    between families is asked of its :class:`~pipeline.model.families.base.Family`."""

    def __init__(self, model: nn.Module, has_head: bool = True) -> None:
        super().__init__()
        self.model = model
        self.family = model_family(model)  # the model_type
        self.kind: Family = FAMILIES[self.family]
        self.encoder_attr = self.kind.encoder_attr
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
        if self.kind.token_type_ids:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        out = getattr(self.model, self.encoder_attr)(**kwargs)
        return out.last_hidden_state, (out.hidden_states if all_layers else None)

    def qkv_sources(self, layer: int) -> list[QKVSource]:
        """Where Q, K and V of ``layer`` are read (by forward hooks): modules and the functions
        from their outputs to Q/K/V as the attention uses them ([B, S, H], heads side by side)."""
        return self.kind.qkv_sources(self.model, layer)

    def projections_out(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """The attention output projection (its input: the heads' outputs side by side) and the
        FFN's second matrix (its input: the FFN activations) of ``layer``."""
        return self.kind.projections_out(self.model, layer)

    def residual_norms(self) -> list[nn.Module]:
        """Every norm (LayerNorm, RMSNorm) of the encoder over the residual width."""
        width = model_dims(self.model.config)[1]
        encoder = getattr(self.model, self.encoder_attr)
        return [
            m
            for name, m in encoder.named_modules()
            if type(m).__name__.endswith("Norm")
            and self.kind.normalises_tokens(name)
            and isinstance(getattr(m, "weight", None), torch.Tensor)
            and tuple(m.weight.shape) == (width,)
        ]

    def compile_encoder(self) -> None:
        """torch.compile the encoder: the bulk of the FLOPs, on batches of (almost always) one shape.

        The LM head is left eager: it sees a different number of masked rows every step.
        """
        getattr(self.model, self.encoder_attr).compile()

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """MLM logits of the given rows of hidden states (any leading shape)."""
        return self.kind.head(self.model, hidden)


def _from_pretrained(path: str, attn: str, dtype: torch.dtype) -> tuple[nn.Module, list[str]]:
    from transformers import AutoModelForMaskedLM

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    kind = _model_type(folder / "config.json")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise UserError(f"{folder}: no weights (*.safetensors or pytorch_model.bin) in this folder")
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(folder),
            dtype=dtype,
            attn_implementation=attn_implementation(kind, attn),
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{folder}: transformers cannot load this masked LM ({str(exc).splitlines()[0]})"
        ) from None
    return model, sorted(info.get("missing_keys", []))


def _model_type(config_file: Path) -> str:
    """The ``model_type`` of a config.json, refused in one line when distil has no family for it
    (before transformers loads anything) or when it needs remote code."""
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_file}: not a readable JSON config ({exc})") from None
    kind = str(raw.get("model_type", "")) if isinstance(raw, dict) else ""
    if kind not in FAMILIES and isinstance(raw, dict) and raw.get("auto_map"):
        raise UserError(
            f"{config_file}: model type '{kind}' is defined by code shipped with the model "
            "(auto_map), which distil does not run; distil has no family for it (supported: "
            f"{', '.join(FAMILIES)})"
        )
    family_of(kind)
    return kind


def load_teacher(path: str, attn: str, need_head: bool) -> MaskedLM:
    """The teacher in fp32 on the CPU (cast and moved by the caller), eval, no grad."""
    model, missing = _from_pretrained(path, attn, torch.float32)
    head_missing = FAMILIES[model_family(model)].head_missing(missing, model.config)
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
        "embedding_dropout",
        "mlp_dropout",
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
    kind = str(getattr(cfg, "model_type", ""))
    family_of(kind)
    model = AutoModelForMaskedLM.from_config(
        cfg, attn_implementation=attn_implementation(kind, attn)
    )
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
    "embedding_size",
    "num_key_value_heads",
    "head_dim",
    "layer_types",
)


def model_shape(config: Any) -> dict[str, Any]:
    """The config fields that decide the shapes of the weights (what a checkpoint must match)."""
    d = config.to_dict()
    return {k: d[k] for k in SHAPE_KEYS if k in d}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
