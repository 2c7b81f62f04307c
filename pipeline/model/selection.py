"""Which teacher neurons a narrower student keeps, and the teacher's weights cut down to them.

A :class:`Selection` names, for a student of a given :class:`~pipeline.model.masked_lm.Shape`,
the teacher index of every student neuron: one subset of the residual stream (the same in the
embeddings, every LayerNorm, every projection's input or output on the residual side, and the
MLM head), and per student layer the kept Q/K/V outputs (whole heads, and inside each head its
dimensions) and the kept FFN neurons. Two ways to choose:

* :func:`selection` (``init select``, weight selection after Xu et al. 2023): evenly spread
  heads, head dimensions, FFN neurons and residual dimensions, the same in every layer;
* :func:`pruned_selection` (``init prune``, after Minitron): the most important heads and FFN
  neurons of each mapped teacher layer and the most important residual channels, by the scores
  of :mod:`pipeline.model.importance`. Head dimensions inside a kept head stay evenly spread
  (a student normally keeps the teacher's head size, so all of them).

Either way indices keep the teacher's order, and at the teacher's full shape every index is kept:
the student is the teacher, bit for bit. :func:`select_weights` applies a selection to a
full-width student state dict (its layer ``j`` already the teacher's layer ``layer_map[j]``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from data_prep.errors import UserError
from pipeline.model.families.base import Rule
from pipeline.model.importance import Importance, kept_share, top
from pipeline.model.masked_lm import Shape


def spread(n: int, k: int) -> list[int]:
    """k of the indices 0..n-1, evenly spread, 0 first: floor(i n / k) (all of them when k = n)."""
    return [i * n // k for i in range(k)]


@dataclass(frozen=True)
class Selection:
    """The teacher neurons a narrower student keeps."""

    residual: list[int]  # teacher dimension of each student residual dimension
    attention: list[list[int]]  # per student layer: teacher Q/K/V output of each student one
    ffn: list[list[int]]  # per student layer: teacher FFN neuron of each student one
    heads: list[list[int]]  # per student layer: the teacher heads kept (for reports)


def _check_fits(teacher: Shape, student: Shape, init: str) -> None:
    if (
        student.hidden > teacher.hidden
        or student.heads > teacher.heads
        or student.head_size > teacher.head_size
        or student.intermediate > teacher.intermediate
        or student.layers > teacher.layers
    ):
        raise UserError(
            f"model.init {init} takes a subset of the teacher's neurons, so the student can be no "
            f"larger anywhere: teacher {teacher.layers} layers, {teacher.hidden} wide, "
            f"{teacher.heads} heads of {teacher.head_size}, FFN {teacher.intermediate}; student "
            f"{student.layers} layers, {student.hidden} wide, {student.heads} heads of "
            f"{student.head_size}, FFN {student.intermediate}. Change model.student_heads (or "
            "_hidden/_intermediate/_layers), or use model.init random"
        )


def _qkv_rows(teacher: Shape, student: Shape, heads: list[int]) -> list[int]:
    dims = spread(teacher.head_size, student.head_size)
    return [h * teacher.head_size + d for h in heads for d in dims]


def selection(teacher: Shape, student: Shape) -> Selection:
    """Weight selection: evenly spread neurons, the same in every layer; refuses a larger student."""
    _check_fits(teacher, student, "select")
    heads = spread(teacher.heads, student.heads)
    rows = _qkv_rows(teacher, student, heads)
    ffn = spread(teacher.intermediate, student.intermediate)
    n = student.layers
    return Selection(spread(teacher.hidden, student.hidden), [rows] * n, [ffn] * n, [heads] * n)


def pruned_layer_map(importance: Importance, layers: int) -> list[int]:
    """The ``layers`` teacher layers of the highest block importance, in order."""
    return top(importance.layers, layers)


def pruned_selection(
    teacher: Shape, student: Shape, importance: Importance, layer_map: list[int]
) -> Selection:
    """The most important neurons: per student layer those of its teacher layer."""
    _check_fits(teacher, student, "prune")
    heads = [top(importance.heads[t], student.heads) for t in layer_map]
    return Selection(
        residual=top(importance.channels, student.hidden),
        attention=[_qkv_rows(teacher, student, h) for h in heads],
        ffn=[top(importance.neurons[t], student.intermediate) for t in layer_map],
        heads=heads,
    )


def student_selection(
    teacher: Shape, student: Shape, init: str, layer_map: list[int], importance: Importance | None
) -> Selection | None:
    """The selection of ``init`` (None for ``teacher`` and ``random``: nothing is cut)."""
    if init == "select":
        return selection(teacher, student)
    if init == "prune":
        if importance is None:
            raise ValueError("init prune needs the teacher's importance scores")
        return pruned_selection(teacher, student, importance, layer_map)
    return None


_LAYER_KEY = re.compile(r"\.layers?\.(\d+)\.")


def _index(which: str, sel: Selection, layer: int | None, size: int, key: str) -> list[int]:
    """The kept indices of a dimension of ``size`` named by a rule letter: ``R`` residual,
    ``A`` attention rows, ``F`` FFN neurons; ``A3``/``F2``: the same rows in each of the 3 (Q,
    K, V) or 2 (input, gate) equal blocks of a fused projection."""
    if which[0] == "R":
        return sel.residual
    if layer is None:
        raise RuntimeError(f"weight selection: {key} is per layer but names no layer")
    rows = (sel.attention if which[0] == "A" else sel.ffn)[layer]
    blocks = int(which[1:] or 1)
    width = size // blocks
    return [b * width + r for b in range(blocks) for r in rows]


def select_weights(
    state: dict[str, torch.Tensor], sel: Selection, rules: list[Rule]
) -> dict[str, torch.Tensor]:
    """Each tensor of a full-width student state dict cut down to the selected neurons, by the
    family's ``rules`` (pattern of a key, index set of dim 0, of dim 1; "" keeps the dim)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        rule = next((r for r in rules if r[0].search(key)), None)
        if rule is None:
            raise RuntimeError(f"weight selection: no rule for the teacher tensor {key}")
        match = _LAYER_KEY.search(key)
        layer = int(match.group(1)) if match else None
        for dim, which in enumerate(rule[1:3]):
            if not which or dim >= value.ndim:
                continue
            index = _index(which, sel, layer, value.shape[dim], key)
            value = value.index_select(dim, torch.tensor(index))
        out[key] = value.contiguous()
    return out


PRUNING_DIR = "pruning"
"""RUN_DIR/pruning/: the calibration's importance scores and what the student kept."""
REPORT_FILE = "kept.json"


def pruning_report(
    importance: Importance, teacher: Shape, selection: Selection, layer_map: list[int]
) -> dict[str, Any]:
    """What a pruned student kept, per layer, and each kept subset's share of the importance."""
    layers = []
    for j, t in enumerate(layer_map):
        layers.append(
            {
                "student_layer": j,
                "teacher_layer": t,
                "block_importance": importance.layers[t],
                "heads": selection.heads[j],
                "heads_share": kept_share(importance.heads[t], selection.heads[j]),
                "ffn_neurons": len(selection.ffn[j]),
                "ffn_share": kept_share(importance.neurons[t], selection.ffn[j]),
            }
        )
    return {
        "teacher": asdict(teacher),
        "calibration": {"sequences": importance.sequences, "tokens": importance.tokens},
        "layers_kept": list(layer_map),
        "layers_share": kept_share(importance.layers, layer_map),
        "channels_kept": len(selection.residual),
        "channels_share": kept_share(importance.channels, selection.residual),
        "channels": selection.residual,
        "per_layer": layers,
    }
