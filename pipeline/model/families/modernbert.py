"""ModernBERT: pre-norm layers with a fused ``Wqkv``, rotary position embeddings, a gated MLP
(``Wi`` is 2 x FFN wide: input and gate) and alternating global and local (sliding-window)
attention, named per layer by ``config.layer_types``.

* Q/K/V are the three thirds of ``Wqkv``'s output with the rotary embedding of the layer's type
  applied to Q and K by the model's own function, as the attention sees them.
* A student keeps the attention type of each teacher layer it is built from: its
  ``layer_types`` is the teacher's sliced by the layer map.
* Layer 0 has no attention norm (an identity): a student whose layer 0 comes from another
  teacher layer drops that layer's attention norm, and a later student layer made from teacher
  layer 0 starts with a fresh one (this changes the function; the default maps put teacher layer
  0 at student layer 0).
* The attention loss recomputes full softmax(QK^T) maps; a local layer attends within a window,
  so ``loss.alpha_attn`` is refused when a distilled layer is local (use a layer map of global
  layers, or MiniLMv2 relations).
* Weight selection cuts whole heads of the teacher's head size (rotary pairs), the same rows in
  each third of ``Wqkv``, and the same FFN neurons in both halves of ``Wi``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from pipeline.model.families.base import Family, QKVSource, Rule, rules

MODERNBERT_RULES = rules(
    [
        (r"tok_embeddings\.weight$", "", "R"),
        (r"norm\.(weight|bias)$", "R", ""),
        (r"attn\.Wqkv\.weight$", "A3", "R"),
        (r"attn\.Wqkv\.bias$", "A3", ""),
        (r"attn\.Wo\.weight$", "R", "A"),
        (r"mlp\.Wi\.weight$", "F2", "R"),
        (r"mlp\.Wi\.bias$", "F2", ""),
        (r"mlp\.Wo\.weight$", "R", "F"),
        (r"(attn\.Wo|mlp\.Wo|head\.dense)\.bias$", "R", ""),
        (r"head\.dense\.weight$", "R", "R"),
        (r"decoder\.weight$", "", "R"),
        (r"decoder\.bias$", "", ""),
    ]
)


class ModernBert(Family):
    name = "modernbert"
    model_types = ("modernbert",)
    encoder_attr = "model"
    head_prefixes = ("head.", "decoder.bias")
    tied_head_keys = ("decoder.weight",)
    layer_key = re.compile(r"\.layers\.(\d+)\.")
    rotary = True

    def layers(self, model: Any) -> Any:
        return model.model.layers

    def qkv_sources(self, model: Any, layer: int) -> list[QKVSource]:
        from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

        m: Any = model
        att = self.layers(model)[layer].attn
        heads, head_dim = m.config.num_attention_heads, att.head_dim
        layer_type = m.config.layer_types[layer]
        rotary = m.model.rotary_emb

        def split(out: torch.Tensor) -> dict[str, torch.Tensor]:
            b, s = out.shape[:2]
            q, k, v = out.view(b, s, 3, heads, head_dim).unbind(dim=2)  # [B, S, h, d]
            positions = torch.arange(s, device=out.device).unsqueeze(0)
            cos, sin = rotary(out, positions, layer_type)
            q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            return {
                "q": q.transpose(1, 2).reshape(b, s, -1),
                "k": k.transpose(1, 2).reshape(b, s, -1),
                "v": v.reshape(b, s, -1),
            }

        return [(att.Wqkv, split)]

    def projections_out(self, model: Any, layer: int) -> tuple[nn.Module, nn.Module]:
        block = self.layers(model)[layer]
        return block.attn.Wo, block.mlp.Wo

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        m: Any = model
        return m.decoder(m.head(hidden))

    def attention_refused(self, config: Any, layer_map: list[int]) -> str | None:
        local = [t for t in layer_map if config.layer_types[t] != "full_attention"]
        if not local:
            return None
        return (
            f"ModernBERT's teacher layers {local} are local (sliding-window) attention, and the "
            "attention loss compares full attention maps: set model.layer_map to global layers "
            f"only ({[i for i, t in enumerate(config.layer_types) if t == 'full_attention']}), "
            "or set loss.alpha_attn 0 and use loss.alpha_relation (MiniLMv2 relations)"
        )

    def adjust_student_config(
        self, raw: dict[str, Any], teacher: Any, layer_map: list[int]
    ) -> None:
        raw["layer_types"] = [teacher.layer_types[t] for t in layer_map]

    def student_state(
        self, state: dict[str, torch.Tensor], layer_map: list[int]
    ) -> dict[str, torch.Tensor]:
        out = super().student_state(state, layer_map)
        return {k: v for k, v in out.items() if ".layers.0.attn_norm." not in k}

    def may_miss(self, key: str) -> bool:
        return super().may_miss(key) or ".attn_norm." in key

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        return MODERNBERT_RULES


FAMILY = ModernBert()
