"""The engine's module: the weighted sum of the active losses, and where the student's weights
sit in its state dict (what export takes back out)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pipeline.config.schema import LossConfig
from pipeline.data.batch import DeviceBatch, take_rows
from pipeline.model.alignment import Alignment, projection_shapes, resolve_alignment
from pipeline.model.losses import cosine_loss, kd_loss, mlm_loss, relation_kl, relation_probs
from pipeline.model.masked_lm import MaskedLM, load_teacher
from pipeline.model.objective import STUDENT_PREFIX, StudentWithLoss, student_weights
from pipeline.model.student import Shape, build_student
from pipeline.model.targets import OnlineTeacher, TeacherTargets


def _align(
    teacher: MaskedLM, student: MaskedLM, layer_map: list[int], loss: LossConfig
) -> Alignment:
    t, s = Shape.of(teacher.config), Shape.of(student.config)
    return resolve_alignment(loss, t, s, layer_map, "teacher")


def _batch(vocab: int) -> DeviceBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 12), generator=g)
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7] = ids[0, 3], ids[1, 7]
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(-1)
    return DeviceBatch(ids, None, labels, rows, None, ids.numel())


def test_total_is_the_weighted_sum_of_the_terms(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    student, layer_map = build_student(teacher, 0, None, "teacher", "sdpa", 0.0)
    cfg = LossConfig(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0)
    module = StudentWithLoss(
        student, cfg, _align(teacher, student, layer_map, cfg), distilling=True
    ).eval()
    b = _batch(teacher.config.vocab_size)
    with torch.no_grad():
        t_last, _ = teacher.encode(b.input_ids, None)
        targets = TeacherTargets(
            logits=teacher.head(take_rows(t_last, b.rows)), last_hidden=take_rows(t_last, None)
        )
        total, terms = module(b, targets)
        s_last, _ = student.encode(b.input_ids, None)
        s_logits = student.head(take_rows(s_last, b.rows))
    expected = {
        "ce": kd_loss(s_logits, targets.logits, 2.0),
        "mlm": mlm_loss(s_logits, b.labels.reshape(-1)[b.rows]),
        "cos": cosine_loss(take_rows(s_last, None), targets.last_hidden),
    }
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-5), k
    weighted = 5 * expected["ce"] + 2 * expected["mlm"] + expected["cos"]
    assert total.item() == pytest.approx(weighted.item(), rel=1e-5)
    mlm_only = StudentWithLoss(student, LossConfig(), None, distilling=False).eval()
    with torch.no_grad():
        total, terms = mlm_only(b, None)
    assert set(terms) == {"mlm", "loss"} and total.item() == pytest.approx(expected["mlm"].item())


def test_student_weights_come_back_out_of_the_engine_state(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    student, layer_map = build_student(teacher, 0, None, "teacher", "sdpa", None)
    al = _align(teacher, student, layer_map, LossConfig())
    module = StudentWithLoss(student, LossConfig(), al, distilling=True)
    state = module.state_dict()
    assert all(k.startswith(STUDENT_PREFIX) for k in state)
    weights = student_weights(state)
    assert weights.keys() == student.model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in student.model.state_dict().items())


# --- TinyBERT and MiniLMv2 terms, a narrower student ----------------------------------------------
NARROW = LossConfig(
    alpha_ce=0.0, alpha_mlm=1.0, alpha_cos=0.0, alpha_hidden=2.0, alpha_attn=3.0,
    attn_target="probs", alpha_relation=4.0,
)  # fmt: skip


def _narrow(tiny_teacher: Path) -> tuple[Any, Any, Alignment]:
    """Teacher 4 x 32 wide, 2 heads of 16; student 2 x 16 wide, 1 head of 16, by selection. The
    teacher's queries are scaled up: a freshly initialised one attends almost uniformly."""
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    with torch.no_grad():
        for layer in teacher.model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(30.0)
    student, layer_map = build_student(teacher, 2, None, "select", "sdpa", 0.0, hidden=16)
    al = resolve_alignment(
        NARROW, Shape.of(teacher.config), Shape.of(student.config), layer_map, "select"
    )
    return teacher, student, al


def _padded_batch(vocab: int) -> DeviceBatch:
    b = _batch(vocab)
    mask = torch.ones_like(b.input_ids)
    mask[1, 9:] = 0
    pad_rows = mask.reshape(-1).bool().nonzero().squeeze(-1)
    return DeviceBatch(b.input_ids, mask, b.labels, b.rows, pad_rows, int(mask.sum()))


def test_tinybert_and_minilm_terms_against_a_direct_computation(tiny_teacher: Path) -> None:
    """Every term from the hooks-and-SDPA path equals the same loss computed from what the eager
    models output themselves (hidden states, attention probabilities) and Q/K/V recomputed from
    the layer inputs, with a padded sequence; the total is their weighted sum."""
    teacher, student, al = _narrow(tiny_teacher)
    assert al.relation_heads == 2 and al.attention_groups == 2 and al.layer_map == [0, 3]
    module = StudentWithLoss(student, NARROW, al, distilling=True).eval()
    b = _padded_batch(teacher.config.vocab_size)
    targets = OnlineTeacher(teacher, NARROW, al)(b)
    with torch.no_grad():
        total, terms = module(b, targets)
    assert student.model.config._attn_implementation == "sdpa"  # nothing switched it
    # the same weights, eager attention, HF's own outputs
    e_teacher, e_student = copy.deepcopy(teacher), copy.deepcopy(student)
    for m in (e_teacher, e_student):
        m.model.set_attn_implementation("eager")
    mask = b.attention_mask
    valid = mask.bool()
    with torch.no_grad():
        t_out = e_teacher.model.bert(
            input_ids=b.input_ids, attention_mask=mask, token_type_ids=torch.zeros_like(mask),
            output_hidden_states=True, output_attentions=True,
        )  # fmt: skip
        s_out = e_student.model.distilbert(
            input_ids=b.input_ids, attention_mask=mask, output_hidden_states=True,
            output_attentions=True,
        )  # fmt: skip
        keep = valid.reshape(-1)
        rows = lambda h: h.reshape(-1, h.shape[-1])[keep]  # noqa: E731
        proj = module.projections
        hid = F.mse_loss(proj["embed"](rows(s_out.hidden_states[0])), rows(t_out.hidden_states[0]))
        for j, t in enumerate(al.layer_map):
            hid += F.mse_loss(
                proj["hidden"](rows(s_out.hidden_states[j + 1])), rows(t_out.hidden_states[t + 1])
            )
        att = 0.0
        for j, t in enumerate(al.layer_map):
            p = t_out.attentions[t].mean(1, keepdim=True)  # 2 teacher heads -> 1 student head
            q = s_out.attentions[j]
            kl = (torch.xlogy(p, p) - p * q.clamp_min(1e-30).log()).sum(-1)  # [B, 1, S]
            att += (kl * valid[:, None]).sum() / valid.sum()
        rel = 0.0
        t_layer = e_teacher.model.bert.encoder.layer[3].attention.self
        s_layer = e_student.model.distilbert.transformer.layer[1].attention
        t_in, s_in = t_out.hidden_states[3], s_out.hidden_states[1]
        for t_lin, s_lin in (
            (t_layer.query, s_layer.q_lin), (t_layer.key, s_layer.k_lin),
            (t_layer.value, s_layer.v_lin),
        ):  # fmt: skip
            p_t = relation_probs(t_lin(t_in), 2, valid)
            rel += relation_kl(s_lin(s_in), p_t, 2, valid)
    expected = {"hid": hid, "att": att, "rel": rel}
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(float(value), rel=1e-4), key
    assert terms["rel"].item() == pytest.approx(
        sum(terms[k].item() for k in ("rel_qq", "rel_kk", "rel_vv")), rel=1e-6
    )
    weighted = terms["mlm"] + 2 * terms["hid"] + 3 * terms["att"] + 4 * terms["rel"]
    assert total.item() == pytest.approx(weighted.item(), rel=1e-5)
    # our hooks are gone after the forward, in both models
    for model in (student, teacher):
        assert not any(lin._forward_hooks for i in range(2) for lin, _ in model.qkv_sources(i))


def test_gradients_reach_the_projections_and_the_attention(tiny_teacher: Path) -> None:
    teacher, student, al = _narrow(tiny_teacher)
    module = StudentWithLoss(student, NARROW, al, distilling=True).train()
    b = _padded_batch(teacher.config.vocab_size)
    total, _ = module(b, OnlineTeacher(teacher, NARROW, al)(b))
    total.backward()
    for name in ("embed", "hidden"):
        grad = module.projections[name].weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    layer = student.model.distilbert.transformer.layer
    for lin in (layer[0].attention.q_lin, layer[1].attention.v_lin):  # attention; relations
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    # the teacher is untouched
    assert all(p.grad is None for p in teacher.parameters())


def test_projections_are_in_the_engine_state_but_not_in_the_export(tiny_teacher: Path) -> None:
    _, student, al = _narrow(tiny_teacher)
    module = StudentWithLoss(student, NARROW, al, distilling=True)
    state = module.state_dict()
    extra = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(STUDENT_PREFIX)}
    assert extra == {
        "projections.embed.weight": (32, 16), "projections.embed.bias": (32,),
        "projections.hidden.weight": (32, 16), "projections.hidden.bias": (32,),
    }  # fmt: skip
    assert student_weights(state).keys() == student.model.state_dict().keys()
    assert projection_shapes(NARROW, al) == {"embed": [32, 16], "hidden": [32, 16]}
    # selection init: student dimension i feeds the teacher dimension it was selected from
    w = module.projections["hidden"].weight
    assert torch.equal(w[torch.arange(0, 32, 2), torch.arange(16)], torch.ones(16))
    assert w.sum().item() == 16
