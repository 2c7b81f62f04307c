"""The student built from a teacher: layer maps, exact copies of the mapped teacher layers, the
embeddings and head of the teacher, and RoBERTa-style teachers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.errors import UserError
from pipeline.models import MaskedLM, load_teacher
from pipeline.student import build_student, default_layer_map


def test_default_layer_map_is_distilberts_for_12_to_6() -> None:
    assert default_layer_map(12, 6) == [0, 2, 4, 7, 9, 11]
    assert default_layer_map(4, 2) == [0, 3]
    assert default_layer_map(24, 12)[0] == 0 and default_layer_map(24, 12)[-1] == 23
    assert default_layer_map(6, 1) == [5]
    with pytest.raises(UserError):
        default_layer_map(4, 5)


def test_student_copies_exactly_the_mapped_layers(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    student, layer_map = build_student(teacher, 0, None, "teacher", "sdpa", None)
    assert layer_map == [0, 3]
    assert student.family == "distilbert" and student.num_layers == 2
    t = teacher.model.state_dict()
    s = student.model.state_dict()
    assert not any("token_type" in k or "pooler" in k for k in s)
    for s_layer, t_layer in enumerate(layer_map):
        sp, tp = f"distilbert.transformer.layer.{s_layer}.", f"bert.encoder.layer.{t_layer}."
        assert torch.equal(s[sp + "attention.q_lin.weight"], t[tp + "attention.self.query.weight"])
        assert torch.equal(s[sp + "attention.out_lin.bias"], t[tp + "attention.output.dense.bias"])
        assert torch.equal(s[sp + "ffn.lin1.weight"], t[tp + "intermediate.dense.weight"])
        assert torch.equal(s[sp + "output_layer_norm.weight"], t[tp + "output.LayerNorm.weight"])
    # a layer that is not mapped is not copied anywhere
    unmapped = t["bert.encoder.layer.1.attention.self.query.weight"]
    assert not any(torch.equal(v, unmapped) for k, v in s.items() if v.shape == unmapped.shape)
    assert torch.equal(s["vocab_transform.weight"], t["cls.predictions.transform.dense.weight"])
    assert torch.equal(s["vocab_projector.weight"], t["bert.embeddings.word_embeddings.weight"])
    assert (
        s["vocab_projector.weight"].data_ptr()
        == s["distilbert.embeddings.word_embeddings.weight"].data_ptr()
    )


def test_student_embeddings_and_head_compute_the_teachers(tiny_teacher: Path) -> None:
    """With token type 0 folded into the positions, the student's embedding output and MLM head
    are the teacher's exactly; so a 1:1 layer map reproduces the teacher's logits."""
    teacher = load_teacher(str(tiny_teacher), "eager", need_head=True)
    student, _ = build_student(teacher, 4, [0, 1, 2, 3], "teacher", "eager", None)
    student.model.eval()
    ids = torch.randint(5, 200, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_last, _ = teacher.encode(ids, None)
        s_last, _ = student.encode(ids, None)
        assert torch.allclose(s_last, t_last, atol=1e-5)
        assert torch.allclose(student.head(s_last[0, :3]), teacher.head(t_last[0, :3]), atol=1e-4)


def test_custom_layer_map_and_random_init(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    student, layer_map = build_student(teacher, 3, [1, 2, 3], "teacher", "sdpa", None)
    assert layer_map == [1, 2, 3]
    assert torch.equal(
        student.model.state_dict()["distilbert.transformer.layer.0.ffn.lin2.weight"],
        teacher.model.state_dict()["bert.encoder.layer.1.output.dense.weight"],
    )
    with pytest.raises(UserError, match="layer_map"):
        build_student(teacher, 2, [0, 9], "teacher", "sdpa", None)
    rand, _ = build_student(teacher, 2, None, "random", "sdpa", None)
    assert not torch.equal(
        rand.model.state_dict()["distilbert.transformer.layer.0.ffn.lin1.weight"],
        teacher.model.state_dict()["bert.encoder.layer.0.intermediate.dense.weight"],
    )


def test_roberta_teacher_gets_a_roberta_student(tmp_path: Path) -> None:
    from transformers import RobertaConfig, RobertaForMaskedLM

    cfg = RobertaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(cfg).save_pretrained(str(tmp_path / "roberta"))
    teacher = load_teacher(str(tmp_path / "roberta"), "sdpa", need_head=True)
    student, layer_map = build_student(teacher, 0, None, "teacher", "sdpa", None)
    assert student.family == "roberta" and student.num_layers == 2 and layer_map == [0, 3]
    assert torch.equal(
        student.model.state_dict()["roberta.encoder.layer.1.attention.self.key.weight"],
        teacher.model.state_dict()["roberta.encoder.layer.3.attention.self.key.weight"],
    )
    ids = torch.randint(4, 120, (2, 9))
    last, hidden = student.encode(ids, None, all_layers=True)
    assert hidden is not None and len(hidden) == 3
    assert student.head(last[:, 0]).shape == (2, 120)
    assert isinstance(student, MaskedLM)
