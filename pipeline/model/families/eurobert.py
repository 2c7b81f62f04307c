"""EuroBERT: a Llama-style encoder (RMSNorm, SwiGLU MLP, rotary embeddings, grouped-query
attention: ``num_key_value_heads`` K/V heads shared by groups of query heads), with a plain
``lm_head`` on the final norm.

* Q/K/V as the attention uses them: rotary applied to Q and K by the model's own function, and
  each K/V head repeated for the query heads of its group (so K and V are as wide as Q).
* Weight selection keeps every head (a subset of query heads would have to keep whole K/V
  groups) at the teacher's head size (rotary pairs), so ``select``/``prune`` students are
  shallower and have a narrower FFN (both of ``gate_proj``/``up_proj`` cut alike), at the
  teacher's width. A narrower student: ``model.init random``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from pipeline.model.families.base import Family, QKVSource, Rule, _selection_error, rules

EUROBERT_RULES = rules(
    [
        (r"embed_tokens\.weight$", "", "R"),
        (r"(layernorm|norm)\.weight$", "R", ""),
        (r"q_proj\.weight$", "A", "R"),
        (r"q_proj\.bias$", "A", ""),
        (r"(k_proj|v_proj)\.weight$", "", "R"),
        (r"(k_proj|v_proj)\.bias$", "", ""),
        (r"o_proj\.weight$", "R", "A"),
        (r"(gate_proj|up_proj)\.weight$", "F", "R"),
        (r"(gate_proj|up_proj)\.bias$", "F", ""),
        (r"down_proj\.weight$", "R", "F"),
        (r"(o_proj|down_proj)\.bias$", "R", ""),
        (r"lm_head\.weight$", "", "R"),
        (r"lm_head\.bias$", "", ""),
    ]
)


class EuroBert(Family):
    name = "eurobert"
    model_types = ("eurobert",)
    encoder_attr = "model"
    head_prefixes = ("lm_head.",)
    layer_key = re.compile(r"\.layers\.(\d+)\.")
    rotary = True

    def layers(self, model: Any) -> Any:
        return model.model.layers

    def qkv_sources(self, model: Any, layer: int) -> list[QKVSource]:
        from transformers.models.eurobert.modeling_eurobert import apply_rotary_pos_emb

        m: Any = model
        att = self.layers(model)[layer].self_attn
        head_dim = att.head_dim
        groups = m.config.num_attention_heads // m.config.num_key_value_heads
        rotary = m.model.rotary_emb

        def heads(out: torch.Tensor) -> torch.Tensor:  # [B, S, h*d] -> [B, h, S, d]
            return out.view(*out.shape[:2], -1, head_dim).transpose(1, 2)

        def flat(x: torch.Tensor) -> torch.Tensor:  # [B, h, S, d] -> [B, S, h*d]
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

        def rope(out: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(out.shape[1], device=out.device).unsqueeze(0)
            cos, sin = rotary(out, positions)
            x = heads(out)
            return apply_rotary_pos_emb(x, x, cos, sin)[0]

        def q(out: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"q": flat(rope(out))}

        def k(out: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"k": flat(rope(out).repeat_interleave(groups, dim=1))}

        def v(out: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"v": flat(heads(out).repeat_interleave(groups, dim=1))}

        return [(att.q_proj, q), (att.k_proj, k), (att.v_proj, v)]

    def projections_out(self, model: Any, layer: int) -> tuple[nn.Module, nn.Module]:
        block = self.layers(model)[layer]
        return block.self_attn.o_proj, block.mlp.down_proj

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        return model.lm_head(hidden)

    def head_missing(self, missing: list[str], config: Any) -> list[str]:
        tied = bool(getattr(config, "tie_word_embeddings", False))
        return [
            k for k in missing if k.startswith("lm_head.") and not (tied and k.endswith(".weight"))
        ]

    def adjust_student_config(
        self, raw: dict[str, Any], teacher: Any, layer_map: list[int]
    ) -> None:
        heads = raw["num_attention_heads"]
        raw["head_dim"] = raw["hidden_size"] // heads
        if heads != teacher.num_attention_heads:
            group = teacher.num_attention_heads // teacher.num_key_value_heads
            raw["num_key_value_heads"] = heads // group if heads % group == 0 else heads

    def check_selection(self, config: Any, teacher: Any, student: Any, init: str) -> None:
        if (student.hidden, student.heads) != (teacher.hidden, teacher.heads):
            raise _selection_error(
                f"eurobert shares each K/V head among a group of query heads and rotates head "
                f"dimensions in pairs, so model.init {init} keeps every head at the teacher's width "
                f"({teacher.hidden} wide, {teacher.heads} heads; the student asks for "
                f"{student.hidden}, {student.heads}): cut layers (model.student_layers) and the "
                "FFN (model.student_intermediate) only, or use model.init random"
            )

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        return EUROBERT_RULES


FAMILY = EuroBert()
