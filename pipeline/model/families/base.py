"""What differs between model families, declared once: the :class:`Family` base class.

A family module (``bert.py``, ``modernbert.py``, ...) subclasses :class:`Family` and says where
its encoder, layers, Q/K/V projections, attention and FFN output projections and MLM head are;
how a student config is derived from the teacher's; how a teacher state dict becomes the state
dict of a full-width student of the same family (layer ``j`` the teacher's layer
``layer_map[j]``); and the weight-selection rule of each parameter name (which dimension of a
tensor lies on the residual stream ``R``, the attention heads ``A``, the FFN neurons ``F``, or
stays whole ``""``). Nothing outside ``pipeline/model/families`` names a parameter of a family.

Q/K/V are read by forward hooks on the modules of :meth:`Family.qkv_sources`: each source is a
module and a function from its output to any of ``q``, ``k``, ``v`` as the attention uses them
([B, S, heads x head size], heads side by side): rotary embeddings applied where the model
applies them, grouped K/V heads repeated to one per query head.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

QKVFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
QKVSource = tuple[nn.Module, QKVFn]
Rule = tuple[re.Pattern[str], str, str]


def rules(table: list[tuple[str, str, str]]) -> list[Rule]:
    """Compiled selection rules: (pattern of a key, index set of dim 0, index set of dim 1)."""
    return [(re.compile(p), d0, d1) for p, d0, d1 in table]


def only(name: str) -> QKVFn:
    """A projection whose output is one of Q, K, V as the attention uses it."""
    return lambda out: {name: out}


def renumber_layers(
    state: dict[str, torch.Tensor], layer_map: list[int], layer_key: re.Pattern[str]
) -> dict[str, torch.Tensor]:
    """The teacher's state with student layer ``j`` holding teacher layer ``layer_map[j]``
    (a teacher layer mapped twice is copied twice; one not mapped is left out)."""
    inverse: dict[int, list[int]] = {}
    for s_layer, t_layer in enumerate(layer_map):
        inverse.setdefault(t_layer, []).append(s_layer)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = layer_key.search(key)
        if match is None:
            out[key] = value
            continue
        word = match.group(0).split(".")[1]  # "layer" or "layers"
        for s_layer in inverse.get(int(match.group(1)), []):
            out[key[: match.start()] + f".{word}.{s_layer}." + key[match.end() :]] = value
    return out


class Family:
    """A model family: every place its models differ from another family's."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    encoder_attr: str = ""  # the encoder inside the *ForMaskedLM model
    head_prefixes: tuple[str, ...] = ()  # the MLM head's keys
    tied_head_keys: tuple[str, ...] = ()  # head keys that may be tied to the embeddings
    layer_key: re.Pattern[str] = re.compile(r"\.layer\.(\d+)\.")
    sdpa: bool = True  # transformers runs it with SDPA (else its own kernel only)
    token_type_ids: bool = False  # pass zeros: the model adds token-type embedding 0
    rotary: bool = False  # rotary position embeddings: a head's dimensions cannot be subset
    attention_refusal: str | None = None  # why loss.alpha_attn is refused (None: supported)

    # --- the encoder ------------------------------------------------------------------------
    def layers(self, model: Any) -> Any:
        return getattr(model, self.encoder_attr).encoder.layer

    def qkv_sources(self, model: Any, layer: int) -> list[QKVSource]:
        att = self.layers(model)[layer].attention.self
        return [(att.query, only("q")), (att.key, only("k")), (att.value, only("v"))]

    def projections_out(self, model: Any, layer: int) -> tuple[nn.Module, nn.Module]:
        """The attention output projection and the FFN's second matrix of ``layer``."""
        block = self.layers(model)[layer]
        return block.attention.output.dense, block.output.dense

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attention_refused(self, config: Any, layer_map: list[int]) -> str | None:
        """Why the attention-map loss cannot be computed for this model (None: it can)."""
        return self.attention_refusal

    def normalises_tokens(self, name: str) -> bool:
        """Whether the norm module ``name`` (inside the encoder) normalises the tokens' residual
        stream (False: another tensor of the same width, such as DeBERTa's position table)."""
        return True

    # --- the student ------------------------------------------------------------------------
    def student_config(
        self,
        teacher_config: Any,
        layers: int,
        hidden: int,
        heads: int,
        ffn: int,
        layer_map: list[int],
    ) -> Any:
        """The student's config: the teacher's with the student's sizes (same class)."""
        raw = teacher_config.to_dict()
        raw.update(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=ffn,
        )
        self.adjust_student_config(raw, teacher_config, layer_map)
        return type(teacher_config).from_dict(raw)

    def adjust_student_config(
        self, raw: dict[str, Any], teacher: Any, layer_map: list[int]
    ) -> None:
        """Family-specific fields of a student config (``raw``, already resized)."""

    def student_state(
        self, state: dict[str, torch.Tensor], layer_map: list[int]
    ) -> dict[str, torch.Tensor]:
        """The teacher's state dict as a full-width student's of this family."""
        return renumber_layers(state, layer_map, self.layer_key)

    def may_miss(self, key: str) -> bool:
        """A student key the teacher's state need not provide (tied weights, buffers)."""
        return key.endswith(("position_ids",)) or key.endswith(self.tied_head_keys)

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        raise NotImplementedError

    def check_selection(self, config: Any, teacher: Any, student: Any, init: str) -> None:
        """Refuse a ``select``/``prune`` cut this family cannot make (``config``: the
        teacher's; ``teacher``, ``student``: the two Shapes)."""
        if self.rotary and student.head_size != teacher.head_size:
            raise _selection_error(
                f"{self.name} rotates each head's dimensions in pairs (rotary position "
                f"embeddings), so model.init {init} keeps whole heads of the teacher's head size "
                f"{teacher.head_size} (the student's is {student.head_size}): set "
                f"model.student_heads to model.student_hidden / {teacher.head_size}, or use "
                "model.init random"
            )

    def head_missing(self, missing: list[str], config: Any) -> list[str]:
        """The MLM-head keys a loaded checkpoint lacked (tied ones do not count)."""
        return [
            k
            for k in missing
            if k.startswith(self.head_prefixes) and not k.endswith(self.tied_head_keys)
        ]


def _selection_error(message: str) -> Exception:
    from data_prep.errors import UserError

    return UserError(message)
