"""The engine's module: the weighted sum of the active losses, and where the student's weights
sit in its state dict (what export takes back out)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.batch import DeviceBatch, take_rows
from pipeline.config import LossConfig
from pipeline.losses import cosine_loss, kd_loss, mlm_loss
from pipeline.models import load_teacher
from pipeline.objective import STUDENT_PREFIX, StudentWithLoss, student_weights
from pipeline.student import build_student
from pipeline.targets import TeacherTargets


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
    module = StudentWithLoss(student, cfg, layer_map, distilling=True).eval()
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
    mlm_only = StudentWithLoss(student, LossConfig(), [], distilling=False).eval()
    with torch.no_grad():
        total, terms = mlm_only(b, None)
    assert set(terms) == {"mlm", "loss"} and total.item() == pytest.approx(expected["mlm"].item())


def test_student_weights_come_back_out_of_the_engine_state(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    student, layer_map = build_student(teacher, 0, None, "teacher", "sdpa", None)
    module = StudentWithLoss(student, LossConfig(), layer_map, distilling=True)
    state = module.state_dict()
    assert all(k.startswith(STUDENT_PREFIX) for k in state)
    weights = student_weights(state)
    assert weights.keys() == student.model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in student.model.state_dict().items())
