"""The pairing of student and teacher internals: what each loss can compare, and the hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.errors import UserError
from pipeline.config.schema import LossConfig
from pipeline.model.alignment import capture_qkv, default_relation_heads, resolve_alignment
from pipeline.model.masked_lm import load_teacher
from pipeline.model.student import Shape

BASE = Shape(12, 768, 12, 3072)
MINI = Shape(6, 384, 12, 1536)
NARROW = Shape(4, 256, 4, 1024)


def test_relation_heads_default_to_a_count_dividing_both_widths() -> None:
    assert default_relation_heads(BASE, MINI) == 12
    assert default_relation_heads(MINI, NARROW) == 8  # 12 does not divide 256; 8 = 384/48 = 256/32
    al = resolve_alignment(
        LossConfig(alpha_relation=1, alpha_cos=0), MINI, NARROW, [1, 2, 4, 5], "random"
    )
    assert al.relation_heads == 8 and al.relation_layers == (5, 3) and al.residual is None
    al = resolve_alignment(
        LossConfig(alpha_relation=1, alpha_cos=0, relation_teacher_layer=2, relation_heads=16),
        MINI, Shape(4, 256, 8, 1024), [1, 2, 4, 5], "select",
    )  # fmt: skip
    assert al.relation_heads == 16 and al.relation_layers == (2, 3)
    assert al.residual == [i * 384 // 256 for i in range(256)]


@pytest.mark.parametrize(
    ("loss", "needle"),
    [
        (LossConfig(alpha_cos=1), "loss.alpha_cos compares hidden states directly"),
        (LossConfig(alpha_cos=0, alpha_mse=1), "use loss.alpha_hidden"),
        (LossConfig(alpha_cos=0, alpha_relation=1, relation_heads=12), "must divide both widths"),
        (LossConfig(alpha_cos=0, alpha_relation=1, relation_teacher_layer=6), "layers 0..5"),
        (LossConfig(alpha_cos=0, alpha_relation=1, relation_student_layer=-5), "layers 0..3"),
    ],
)
def test_losses_these_shapes_cannot_support_are_refused(loss: LossConfig, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        resolve_alignment(loss, MINI, NARROW, [1, 2, 4, 5], "random")


def test_attention_loss_needs_student_heads_dividing_the_teachers() -> None:
    loss = LossConfig(alpha_cos=0, alpha_attn=1)
    assert resolve_alignment(loss, MINI, NARROW, [1, 2, 4, 5], "random").attention_groups == 3
    with pytest.raises(UserError, match="alpha_relation"):
        resolve_alignment(loss, MINI, Shape(4, 256, 8, 1024), [1, 2, 4, 5], "random")


def test_hooks_capture_only_the_asked_projections_and_always_go(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    ids = torch.randint(5, 100, (2, 7))
    with capture_qkv(teacher, {1: "qkv", 3: "q"}) as cap:
        teacher.encode(ids, None)
    assert sorted(cap.out) == [(1, "k"), (1, "q"), (1, "v"), (3, "q")]
    assert cap[1, "v"].shape == (2, 7, 32)
    with pytest.raises(RuntimeError), capture_qkv(teacher, {0: "qkv"}):
        raise RuntimeError("a failing forward")
    assert not any(m._forward_hooks for i in range(4) for m, _ in teacher.qkv_sources(i))


@pytest.mark.slow
def test_hooks_work_under_torch_compile() -> None:
    """--model.compile true with an attention loss: a compiled encoder gives the captured Q/K/V
    and their gradients of the eager one, and hooking the same layers every step compiles once."""
    from torch._dynamo.utils import counters
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from pipeline.model.masked_lm import MaskedLM

    cfg = DistilBertConfig(
        vocab_size=100, dim=32, n_heads=2, n_layers=2, hidden_dim=64, max_position_embeddings=32,
        dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    compiled, eager = MaskedLM(DistilBertForMaskedLM(cfg)), MaskedLM(DistilBertForMaskedLM(cfg))
    eager.load_state_dict(compiled.state_dict())
    compiled.compile_encoder()
    ids = torch.randint(5, 100, (2, 16))
    counters.clear()
    grads = []
    for model in (compiled, eager):
        for _ in range(3):
            model.zero_grad()
            with capture_qkv(model, {0: "qk", 1: "v"}) as cap:
                last, _ = model.encode(ids, None)
            (cap[1, "v"].square().sum() + cap[0, "q"].sum() + last.sum()).backward()
        grads.append(model.model.distilbert.transformer.layer[0].attention.q_lin.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1
