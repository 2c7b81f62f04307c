"""What the layer-wise losses compare inside the two models, and how it is read out of them.

:class:`Alignment` (resolved once by :func:`resolve_alignment`, before any process group) pairs
the student with the teacher: the layer map (student layer j <-> teacher layer ``layer_map[j]``),
both shapes, the layers and head count of the MiniLMv2 relations, and the teacher dimensions the
student's residual stream was selected from (which initialise the TinyBERT projections). It
refuses, in one line, a loss that cannot compare these two shapes.

Reading Q, K and V: :func:`capture_qkv` puts forward hooks on the query/key/value ``nn.Linear``
modules of the distilled layers only, for one forward pass, and keeps their outputs ([B, S, H],
the heads side by side; the student's with their autograd history). Attention itself keeps
running through SDPA (``model.attn_implementation``) in every layer: nothing asks the model for
its attention probabilities, which would force the eager kernel everywhere. The maps and
relations the losses need are recomputed from the captured Q/K/V at those layers alone
(:mod:`pipeline.model.losses`).

Memory: the maps are O(batch x heads x S^2), at the distilled layers only. In fp32 a
[heads, S, S] map is 4 h S^2 bytes: 12 MiB for 12 heads at S = 512 (0.75 MiB at S = 128).
Each distilled map holds about two of those for the backward pass (the teacher's target and one
student map; the transient peak while a loss is computed is one or two more). Measured
(saved-for-backward storages plus targets, one 512-token sequence, bert-base teacher):
TinyBERT attention 26 MiB per student layer (4 layers: 105 MiB), MiniLMv2 relations 74 MiB
(Q-Q, K-K, V-V, 12 relation heads, one layer); so 3.3 GiB and 2.3 GiB for a micro-batch of 32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from data_prep.errors import UserError
from pipeline.config.schema import LossConfig
from pipeline.model.families.base import QKVFn
from pipeline.model.importance import Importance
from pipeline.model.masked_lm import MaskedLM, Shape
from pipeline.model.selection import student_selection

QKV = "qkv"


@dataclass(frozen=True)
class Alignment:
    """How the student's internals pair with the teacher's (the same on every rank)."""

    layer_map: list[int]
    teacher: Shape
    student: Shape
    relation_layers: tuple[int, int]  # (teacher layer, student layer), 0-based
    relation_heads: int
    residual: list[int] | None  # the teacher dimension of each student residual dimension

    @property
    def attention_groups(self) -> int:
        """Teacher heads averaged into each student head by the attention loss."""
        return self.teacher.heads // self.student.heads


def _layer(index: int, layers: int, name: str) -> int:
    resolved = index + layers if index < 0 else index
    if not 0 <= resolved < layers:
        raise UserError(f"loss.{name} {index}: the model has layers 0..{layers - 1}")
    return resolved


def default_relation_heads(teacher: Shape, student: Shape) -> int:
    """The teacher's head count, or the largest count below it that divides both widths."""
    for heads in range(teacher.heads, 0, -1):
        if teacher.hidden % heads == 0 and student.hidden % heads == 0:
            return heads
    return 1


def resolve_alignment(
    loss: LossConfig,
    teacher: Shape,
    student: Shape,
    layer_map: list[int],
    init: str,
    importance: Importance | None = None,
    attention_refusal: str | None = None,
) -> Alignment:
    """The alignment of a distillation run; a loss these shapes cannot support is refused, and
    the attention loss where the family's attention is not what it computes
    (``attention_refusal``: :meth:`pipeline.model.families.base.Family.attention_refused`)."""
    if loss.alpha_attn > 0 and attention_refusal:
        raise UserError(f"loss.alpha_attn: {attention_refusal}")
    same_width = teacher.hidden == student.hidden
    for name in ("alpha_cos", "alpha_mse"):
        if getattr(loss, name) > 0 and not same_width:
            raise UserError(
                f"loss.{name} compares hidden states directly, so it needs the teacher's width "
                f"({teacher.hidden}; the student has {student.hidden}): set it to 0 and use "
                "loss.alpha_hidden (through a learned projection)"
            )
    if loss.alpha_attn > 0 and teacher.heads % student.heads:
        raise UserError(
            f"loss.alpha_attn averages the teacher's {teacher.heads} heads in equal groups, one per "
            f"student head, so the student's head count must divide it (it is {student.heads}): "
            "change model.student_heads, or distil attention with loss.alpha_relation (any heads)"
        )
    heads = loss.relation_heads or default_relation_heads(teacher, student)
    if loss.alpha_relation > 0 and (teacher.hidden % heads or student.hidden % heads):
        raise UserError(
            f"loss.relation_heads {heads} must divide both widths (teacher {teacher.hidden}, "
            f"student {student.hidden})"
        )
    relation_layers = (
        _layer(loss.relation_teacher_layer, teacher.layers, "relation_teacher_layer"),
        _layer(loss.relation_student_layer, student.layers, "relation_student_layer"),
    )
    residual: list[int] | None = None
    if init == "teacher":
        residual = list(range(teacher.hidden))
    elif sel := student_selection(teacher, student, init, layer_map, importance):
        residual = sel.residual
    return Alignment(list(layer_map), teacher, student, relation_layers, heads, residual)


def projection_shapes(loss: LossConfig, alignment: Alignment | None) -> dict[str, list[int]]:
    """The parameters the objective adds to the student ([out, in] of each projection): what
    the checkpoint holds besides the student, and what export leaves out."""
    if alignment is None or loss.alpha_hidden <= 0:
        return {}
    shape = [alignment.teacher.hidden, alignment.student.hidden]
    return {"embed": shape, "hidden": shape}


def init_projection(linear: torch.nn.Linear, residual: list[int] | None) -> None:
    """The student's residual dimension i feeds teacher dimension ``residual[i]`` (identity at the
    teacher's width): the projection starts where the initialisation put the student. Without a
    selection (random init): the layer's own init, from a fixed seed."""
    with torch.no_grad():
        if residual is None:
            g = torch.Generator().manual_seed(0)
            bound = 1.0 / linear.in_features**0.5
            linear.weight.uniform_(-bound, bound, generator=g)
        else:
            linear.weight.zero_()
            linear.weight[torch.tensor(residual), torch.arange(len(residual))] = 1.0
        linear.bias.zero_()


def qkv_layers_student(loss: LossConfig, al: Alignment) -> dict[int, str]:
    """Student layer -> which of Q, K, V the losses read there."""
    out: dict[int, str] = {}
    if loss.alpha_attn > 0:
        out.update({j: "qk" for j in range(al.student.layers)})
    if loss.alpha_relation > 0:
        out[al.relation_layers[1]] = QKV
    return out


def qkv_layers_teacher(loss: LossConfig, al: Alignment) -> dict[int, str]:
    """Teacher layer -> which of Q, K, V the losses read there."""
    out: dict[int, str] = {}
    if loss.alpha_attn > 0:
        out.update({t: "qk" for t in al.layer_map})
    if loss.alpha_relation > 0:
        out[al.relation_layers[0]] = QKV
    return out


class CaptureQKV:
    """The outputs of the Q/K/V projections of some layers during one forward pass."""

    def __init__(self) -> None:
        self.out: dict[tuple[int, str], torch.Tensor] = {}

    def __getitem__(self, key: tuple[int, str]) -> torch.Tensor:
        return self.out[key]


@contextmanager
def capture_qkv(model: MaskedLM, layers: dict[int, str]) -> Iterator[CaptureQKV]:
    """Hooks on the Q/K/V projections of ``layers`` (layer -> any of "q", "k", "v") for the
    duration of the block; removed on exit, whatever happens."""
    cap = CaptureQKV()
    handles = []

    def keep(layer: int, which: str, read: QKVFn) -> Any:
        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            # The first call of a pass is the tokens' projection: DeBERTa calls its Q/K
            # projections again on the relative-position embeddings, in the same pass.
            for name, value in read(output).items():
                if name in which and (layer, name) not in cap.out:
                    cap.out[layer, name] = value

        return hook

    try:
        for layer, which in layers.items():
            for module, read in model.qkv_sources(layer):
                handles.append(module.register_forward_hook(keep(layer, which, read)))
        yield cap
    finally:
        for handle in handles:
            handle.remove()
