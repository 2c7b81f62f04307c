"""The student derived from a teacher: its shape, its layer map, its initialisation.

Shape. A student of a BERT teacher is a ``DistilBertForMaskedLM`` (no token-type embeddings, no
pooler); of any other family (DistilBERT, RoBERTa, ModernBERT, DeBERTa-v2/v3, ELECTRA,
EuroBERT), the teacher's own class; what differs between families (config fields such as
ModernBERT's ``layer_types``, parameter names, selection rules) is in
:mod:`pipeline.model.families`. Its depth, width
(hidden size), attention heads and FFN size are set by ``model.student_layers/_hidden/_heads/
_intermediate`` or a ``model.student_config`` file (:func:`student_shape_from_file`); what is
left at 0 follows the teacher: half its layers, its width, its head *size* (so a narrower student
has fewer heads), its FFN-to-width ratio. Vocabulary, positions, activation and dropout are the
teacher's.

Layer map. Student layer j is paired with teacher layer ``layer_map[j]``, which initialises it
(``init`` teacher or select) and which the layer-wise losses compare it with. Two rules
(:func:`default_layer_map`): ``distilbert`` spreads the layers evenly, first and last included
(12 -> 6: 0,2,4,7,9,11, the DistilBERT release); ``tinybert`` takes the top layer of each of M
equal blocks, g(m) = m N / M (12 -> 4: 2,5,8,11; Jiao et al. 2020).

Initialisation (``model.init``):

* ``teacher``: the DistilBERT init, for students of the teacher's width: the mapped teacher
  layers, the embeddings and the MLM head, copied. BERT adds token-type embedding 0 to every
  token; we fold it into the position embeddings so the student's embedding layer computes exactly
  the teacher's.
* ``select``: weight selection (Xu et al. 2023, "Initializing Models with Larger Ones"), for
  students as wide as the teacher or narrower: every student weight is a sub-tensor of the
  mapped teacher weight, taking a *consistent* subset of neurons
  (:func:`pipeline.model.selection.selection`):
  - the residual stream keeps the teacher dimensions R (evenly spread: floor(i d_T / d_S)), the
    same R everywhere the residual goes: word and position embeddings, every LayerNorm, the
    inputs of Q/K/V and of the FFN, the outputs of the attention projection and of the FFN, and
    the MLM head (whose decoder is tied to the embeddings);
  - attention keeps evenly spread teacher heads and, inside each, evenly spread dimensions, the
    same in Q, K and V (rows) and in the attention output projection (columns): student head j
    is part of teacher head floor(j h_T / h_S);
  - the FFN keeps evenly spread intermediate neurons, the same in its two matrices.
  Nothing is rescaled (as in the paper). At the teacher's width this is the ``teacher`` init bit
  for bit. Narrower, the student computes the teacher's function exactly when the dropped
  neurons are redundant (copies of kept ones, or dead): tested on one layer; in general it is an
  approximation (LayerNorm statistics and dot products over fewer dimensions) that trains faster
  than a random init. Needs heads <= the teacher's and a head size <= the teacher's.
  Xu et al. also choose the first N layers rather than spread ones; pass ``model.layer_map``
  (e.g. ``[0, 1, 2, 3]``) for that.
* ``prune``: after Minitron (Muralidharan et al. 2024): the same cut as ``select``, but the kept
  heads and FFN neurons of each layer and the residual channels are the teacher's most important
  ones, scored on calibration data (:mod:`pipeline.model.importance`, chosen by
  :func:`pipeline.model.selection.pruned_selection`); ``layer_map_rule importance`` chooses the
  layers by block importance too. At the teacher's full shape it is the teacher, bit for bit.
* ``random``: the architecture's own initialisation, seeded (reproducible whatever ran before).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import UserError
from pipeline.config.schema import ModelConfig
from pipeline.model.families import FAMILIES, attn_implementation, family_of
from pipeline.model.importance import Importance
from pipeline.model.masked_lm import MaskedLM, Shape, model_dims, set_dropout
from pipeline.model.selection import pruned_layer_map, select_weights, student_selection


def default_layer_map(
    teacher_layers: int, student_layers: int, rule: str = "distilbert"
) -> list[int]:
    """The teacher layer of each student layer: ``distilbert`` (evenly spread, first and last
    included: 12 -> 6 gives 0,2,4,7,9,11) or ``tinybert`` (the top of each of M equal blocks:
    12 -> 4 gives 2,5,8,11)."""
    if not 1 <= student_layers <= teacher_layers:
        raise UserError(
            f"a student of {student_layers} layers cannot be mapped onto a {teacher_layers}-layer teacher"
        )
    if rule == "tinybert":
        return [(m + 1) * teacher_layers // student_layers - 1 for m in range(student_layers)]
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def student_shape_from_file(path: str) -> dict[str, int]:
    """layers/hidden/heads/intermediate of a student config.json (BERT or DistilBERT names)."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"model.student_config {path}: cannot read a JSON config ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"model.student_config {path}: expected a JSON object")
    shape = dict(zip(("layers", "hidden", "heads", "intermediate"), model_dims(raw), strict=True))
    return {k: v for k, v in shape.items() if v}


def merge_shape(flags: dict[str, int], config_file: str | None) -> dict[str, int]:
    """The student's shape from ``model.student_*`` flags and ``model.student_config``; a flag
    that is set (non-zero) must agree with the file."""
    shape = dict(flags)
    if config_file is None:
        return shape
    for key, value in student_shape_from_file(config_file).items():
        if shape.get(key) and shape[key] != value:
            raise UserError(
                f"model.student_{key} {shape[key]} contradicts model.student_config "
                f"{config_file} ({value}): set one of them"
            )
        shape[key] = value
    return shape


def resolve_shape(teacher: Shape, layers: int, hidden: int, heads: int, intermediate: int) -> Shape:
    """The student's shape: what is given, and the teacher's proportions for what is 0."""
    layers = layers or max(1, teacher.layers // 2)
    hidden = hidden or teacher.hidden
    if not heads:
        if hidden == teacher.hidden:
            heads = teacher.heads
        elif hidden % teacher.head_size == 0:
            heads = hidden // teacher.head_size
        else:
            raise UserError(
                f"model.student_hidden {hidden} is not a multiple of the teacher's head size "
                f"{teacher.head_size}: set model.student_heads"
            )
    if hidden % heads:
        raise UserError(f"model.student_heads {heads} must divide model.student_hidden {hidden}")
    intermediate = intermediate or round(teacher.intermediate * hidden / teacher.hidden)
    if min(layers, hidden, heads, intermediate) < 1:
        raise UserError("the student's layers, hidden size, heads and FFN size must be >= 1")
    return Shape(layers, hidden, heads, intermediate)


def build_student(
    teacher: MaskedLM,
    layers: int,
    layer_map: list[int] | None,
    init: str,
    attn: str,
    dropout: float | None,
    hidden: int = 0,
    heads: int = 0,
    intermediate: int = 0,
    layer_map_rule: str = "distilbert",
    importance: Importance | None = None,
    student_type: str | None = None,
) -> tuple[MaskedLM, list[int]]:
    """The student and its layer map; its weights per ``init`` (teacher, select, prune or
    random). ``prune`` needs the teacher's ``importance``; ``layer_map_rule`` ``importance``
    (prune only) keeps the layers of the highest block importance."""
    from transformers import AutoModelForMaskedLM

    t_shape = Shape.of(teacher.config)
    shape = resolve_shape(t_shape, layers, hidden, heads, intermediate)
    t_layers = teacher.num_layers
    if layer_map:
        layer_map = list(layer_map)
    elif layer_map_rule == "importance":
        if init != "prune" or importance is None:
            raise UserError("model.layer_map_rule importance needs model.init prune")
        default_layer_map(t_layers, shape.layers)  # the one refusal of a deeper student
        layer_map = pruned_layer_map(importance, shape.layers)
    else:
        layer_map = default_layer_map(t_layers, shape.layers, layer_map_rule)
    if len(layer_map) != shape.layers or not all(0 <= i < t_layers for i in layer_map):
        raise UserError(
            f"model.layer_map {layer_map} must list {shape.layers} teacher layers in 0..{t_layers - 1}"
        )
    crossed = cross_family(teacher, student_type)
    if crossed and init != "random":
        raise UserError(
            f"model.student_type {student_type}: a student of another family than the "
            f"teacher's ({teacher.family}) cannot take the teacher's weights (model.init "
            f"{init}); set model.init random, or leave model.student_type unset"
        )
    narrower = (shape.hidden, shape.heads, shape.intermediate) != (
        t_shape.hidden,
        t_shape.heads,
        t_shape.intermediate,
    )
    if init == "teacher" and narrower:
        raise UserError(
            "model.init teacher copies whole teacher layers, so the student must have the teacher's "
            f"width, heads and FFN ({t_shape.hidden}/{t_shape.heads}/{t_shape.intermediate}; the "
            f"student has {shape.hidden}/{shape.heads}/{shape.intermediate}): use model.init select "
            "(weight selection) or random"
        )
    family = teacher.kind
    if init in ("select", "prune"):
        family.check_selection(teacher.config, t_shape, shape, init)
    sel = student_selection(t_shape, shape, init, layer_map, importance)
    if crossed:
        assert student_type is not None
        cfg = cross_family_config(teacher.config, student_type, shape)
    else:
        cfg = family.student_config(
            teacher.config, shape.layers, shape.hidden, shape.heads, shape.intermediate, layer_map
        )
    set_dropout(cfg, dropout)
    attn = attn_implementation(cfg.model_type, attn)
    cfg._attn_implementation = attn
    torch.manual_seed(0)  # random init is reproducible whatever ran before
    student = AutoModelForMaskedLM.from_config(cfg, attn_implementation=attn)
    if init in ("teacher", "select", "prune"):
        t_state = {k: v.detach().float() for k, v in teacher.model.state_dict().items()}
        state = family.student_state(t_state, layer_map)
        state = {k: v for k, v in state.items() if "position_ids" not in k}
        if sel is not None:
            state = select_weights(state, sel, family.select_rules(teacher.config))
        result = student.load_state_dict(state, strict=False)
        s_family = FAMILIES[cfg.model_type]
        unexpected = [k for k in result.unexpected_keys if "position_ids" not in k]
        missing = [k for k in result.missing_keys if not s_family.may_miss(k)]
        if unexpected or missing:
            raise RuntimeError(
                f"student init from teacher: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        student.tie_weights()
    return MaskedLM(student), layer_map


def cross_family(teacher: MaskedLM, student_type: str | None) -> bool:
    """Whether ``student_type`` asks for a student of another family than the teacher's own."""
    if not student_type or student_type == teacher.family:
        return False
    family_of(student_type)  # one line for a type distil has no family for
    return not (teacher.family == "bert" and student_type == "distilbert")


_SPECIAL = ("pad", "bos", "eos", "cls", "sep", "mask")


def cross_family_config(teacher_config: Any, student_type: str, shape: Shape) -> Any:
    """The config of a ``student_type`` student over the teacher's tokenizer: its family's
    defaults with the teacher's vocabulary, positions and special tokens, at ``shape``."""
    from transformers import AutoConfig

    tc = teacher_config
    ids = {k: getattr(tc, f"{k}_token_id", None) for k in _SPECIAL}
    ids["bos"] = ids["bos"] if ids["bos"] is not None else ids["cls"]
    ids["cls"] = ids["cls"] if ids["cls"] is not None else ids["bos"]
    ids["eos"] = ids["eos"] if ids["eos"] is not None else ids["sep"]
    ids["sep"] = ids["sep"] if ids["sep"] is not None else ids["eos"]
    base = AutoConfig.for_model(
        student_type,
        vocab_size=tc.vocab_size,
        max_position_embeddings=tc.max_position_embeddings,
        **{f"{k}_token_id": v for k, v in ids.items()},
    )
    layers = list(range(shape.layers))
    family = FAMILIES[student_type]
    if getattr(base, "layer_types", None) is not None:  # ModernBERT: its own default pattern
        every = int(getattr(base, "global_attn_every_n_layers", 3) or 3)
        base.layer_types = [
            "full_attention" if i % every == 0 else "sliding_attention" for i in layers
        ]
    return family.student_config(base, *_sizes(shape), layers)


def _sizes(shape: Shape) -> tuple[int, int, int, int]:
    return shape.layers, shape.hidden, shape.heads, shape.intermediate


def student_from_config(
    teacher: MaskedLM, m: ModelConfig, importance: Importance | None = None
) -> tuple[MaskedLM, list[int]]:
    """:func:`build_student` with the shape of ``model.student_*`` and ``model.student_config``."""
    flags = {
        "layers": m.student_layers,
        "hidden": m.student_hidden,
        "heads": m.student_heads,
        "intermediate": m.student_intermediate,
    }
    shape = merge_shape(flags, m.student_config)
    return build_student(
        teacher,
        shape.get("layers", 0),
        m.layer_map,
        m.init,
        m.attn_implementation,
        m.dropout,
        hidden=shape.get("hidden", 0),
        heads=shape.get("heads", 0),
        intermediate=shape.get("intermediate", 0),
        layer_map_rule=m.layer_map_rule,
        importance=importance,
        student_type=m.student_type,
    )
