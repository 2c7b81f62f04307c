"""The student built from a teacher: layer maps, exact copies of the mapped teacher layers, the
embeddings and head of the teacher, and RoBERTa-style teachers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from data_prep.errors import UserError
from pipeline.model.masked_lm import MaskedLM, load_teacher
from pipeline.model.student import Shape, build_student, default_layer_map, resolve_shape


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


# --- students of any shape ---------------------------------------------------------------------
def test_tinybert_layer_map_takes_the_top_of_each_block() -> None:
    assert default_layer_map(12, 4, "tinybert") == [2, 5, 8, 11]
    assert default_layer_map(12, 6, "tinybert") == [1, 3, 5, 7, 9, 11]
    assert default_layer_map(6, 4, "tinybert") == [0, 2, 3, 5]
    assert default_layer_map(4, 4, "tinybert") == [0, 1, 2, 3]


def test_shape_defaults_follow_the_teachers_proportions() -> None:
    base = Shape(12, 768, 12, 3072)
    assert resolve_shape(base, 0, 0, 0, 0) == Shape(6, 768, 12, 3072)
    # narrower: the teacher's head size (64) and FFN ratio (4x) are kept
    assert resolve_shape(base, 4, 384, 0, 0) == Shape(4, 384, 6, 1536)
    assert resolve_shape(base, 4, 312, 12, 1200) == Shape(4, 312, 12, 1200)
    with pytest.raises(UserError, match="student_heads"):
        resolve_shape(base, 4, 312, 0, 0)  # 312 is not a multiple of 64
    with pytest.raises(UserError, match="must divide"):
        resolve_shape(base, 4, 312, 5, 0)


def test_student_config_file_sets_the_shape(tmp_path: Path) -> None:
    from pipeline.model.student import merge_shape

    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "distilbert", "n_layers": 4, "dim": 312, "n_heads": 12})
    )
    flags = {"layers": 0, "hidden": 0, "heads": 0, "intermediate": 1200}
    assert merge_shape(flags, str(tmp_path)) == {
        "layers": 4, "hidden": 312, "heads": 12, "intermediate": 1200,
    }  # fmt: skip
    with pytest.raises(UserError, match="contradicts"):
        merge_shape({**flags, "layers": 6}, str(tmp_path / "config.json"))


def test_weight_selection_at_the_teachers_width_is_the_teacher_copy(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    copy, _ = build_student(teacher, 2, None, "teacher", "sdpa", None)
    select, _ = build_student(teacher, 2, None, "select", "sdpa", None)
    a, b = copy.model.state_dict(), select.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_narrow_students_refuse_what_cannot_work(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)  # 32 wide, 2 heads of 16
    with pytest.raises(UserError, match=r"model\.init select"):
        build_student(teacher, 2, None, "teacher", "sdpa", None, hidden=16)
    with pytest.raises(UserError, match=r"no\s+larger"):  # 4 heads of a 2-head teacher
        build_student(teacher, 2, None, "select", "sdpa", None, hidden=16, heads=4)
    with pytest.raises(UserError, match=r"no\s+larger"):
        build_student(teacher, 2, None, "select", "sdpa", None, hidden=64)
    student, _ = build_student(teacher, 2, None, "random", "sdpa", None, hidden=24, heads=4)
    assert (student.config.dim, student.config.n_heads, student.config.hidden_dim) == (24, 4, 48)


def _bert(hidden: int, heads: int, intermediate: int, vocab: int = 60) -> Any:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=24, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForMaskedLM(cfg).eval()


def _doubled(narrow: Any) -> Any:
    """A 2x wider BERT that computes exactly what ``narrow`` computes, each residual dimension
    twice (interleaved), with a second attention head and every other FFN neuron dead: the
    teacher dimensions weight selection drops are all redundant."""
    torch.manual_seed(1)
    wide = _bert(32, 2, 64)
    n = narrow.state_dict()

    def dup(x: torch.Tensor, dim: int = 0) -> torch.Tensor:  # written to the residual: twice
        return x.repeat_interleave(2, dim=dim)

    def read(w: torch.Tensor) -> torch.Tensor:  # read from the residual: the first copy only
        out = torch.zeros(w.shape[0], 2 * w.shape[1])
        out[:, ::2] = w
        return out

    def zeros_after(x: torch.Tensor, dim: int) -> torch.Tensor:  # a dead second head
        return torch.cat([x, torch.zeros_like(x)], dim=dim)

    def every_other(x: torch.Tensor, dim: int) -> torch.Tensor:  # dead odd FFN neurons
        return torch.stack([x, torch.zeros_like(x)], dim=dim + 1).flatten(dim, dim + 1)

    w: dict[str, torch.Tensor] = {}
    for key, value in n.items():
        if "embeddings" in key and key.endswith("embeddings.weight"):
            w[key] = dup(value, 1)
        elif (
            "LayerNorm" in key or key.endswith("output.dense.bias") or "transform.dense.bias" in key
        ):
            w[key] = dup(value)
        elif any(f"self.{x}." in key for x in ("query", "key", "value")):
            w[key] = zeros_after(read(value) if value.ndim == 2 else value, 0)
        elif "attention.output.dense.weight" in key:
            w[key] = zeros_after(dup(value), 1)
        elif "intermediate.dense" in key:
            w[key] = every_other(read(value) if value.ndim == 2 else value, 0)
        elif key.endswith("layer.0.output.dense.weight"):
            w[key] = every_other(dup(value), 1)
        elif "transform.dense.weight" in key:
            w[key] = read(dup(value))
        elif key.endswith("decoder.weight"):
            w[key] = dup(value, 1)
        else:  # the decoder bias: one per token
            w[key] = value
    wide.load_state_dict(w)
    return wide


def test_weight_selection_keeps_the_teachers_function_where_it_can() -> None:
    """One layer: a student selected from a teacher whose dropped neurons are redundant (copies
    of kept residual dimensions, a dead head, dead FFN neurons) computes the narrow model's
    function exactly, and the teacher's hidden states at the selected dimensions."""
    torch.manual_seed(0)
    narrow = _bert(16, 1, 32)
    with torch.no_grad():
        narrow.bert.embeddings.token_type_embeddings.weight.normal_(0, 0.1)
    wide = _doubled(narrow)
    ids = torch.randint(5, 60, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    teacher = MaskedLM(wide)
    with torch.no_grad():  # the construction: the wide model is the narrow one, doubled
        wide_last, _ = teacher.encode(ids, mask)
        narrow_last, _ = MaskedLM(narrow).encode(ids, mask)
        assert torch.allclose(wide_last, narrow_last.repeat_interleave(2, -1), atol=1e-5)
    student, _ = build_student(teacher, 1, None, "select", "sdpa", None, hidden=16)
    assert (student.config.dim, student.config.n_heads, student.config.hidden_dim) == (16, 1, 32)
    student.model.eval()
    with torch.no_grad():
        s_last, _ = student.encode(ids, mask)
        assert torch.allclose(s_last, wide_last[..., ::2], atol=1e-5)
        keep = mask.bool()
        s_logits = student.head(s_last[keep])
        n_logits = MaskedLM(narrow).head(narrow_last[keep])
        assert torch.allclose(s_logits, n_logits, atol=1e-4)
    # a random student of the same shape computes something else
    rand, _ = build_student(teacher, 1, None, "random", "sdpa", None, hidden=16)
    with torch.no_grad():
        r_last, _ = rand.eval().encode(ids, mask)
    assert not torch.allclose(r_last, wide_last[..., ::2], atol=1e-2)


def test_weight_selection_takes_consistent_subsets(tiny_teacher: Path) -> None:
    """Teacher 32 wide, 2 heads of 16, FFN 64; student 16 wide, 2 heads of 8, FFN 32: the same
    residual dimensions everywhere, the same heads and head dimensions in Q, K, V and the output."""
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    student, layer_map = build_student(
        teacher, 2, None, "select", "sdpa", None, hidden=16, heads=2, intermediate=32
    )
    t, s = teacher.model.state_dict(), student.model.state_dict()
    r = torch.arange(0, 32, 2)  # residual: floor(i * 32 / 16)
    a = torch.tensor([h * 16 + d for h in (0, 1) for d in range(0, 16, 2)])  # heads 0, 1; dims
    f = torch.arange(0, 64, 2)
    tp, sp = f"bert.encoder.layer.{layer_map[1]}.", "distilbert.transformer.layer.1."
    assert torch.equal(
        s["distilbert.embeddings.word_embeddings.weight"],
        t["bert.embeddings.word_embeddings.weight"][:, r],
    )
    assert torch.equal(
        s[sp + "attention.k_lin.weight"], t[tp + "attention.self.key.weight"][a][:, r]
    )
    assert torch.equal(s[sp + "attention.v_lin.bias"], t[tp + "attention.self.value.bias"][a])
    assert torch.equal(
        s[sp + "attention.out_lin.weight"], t[tp + "attention.output.dense.weight"][r][:, a]
    )
    assert torch.equal(s[sp + "ffn.lin1.weight"], t[tp + "intermediate.dense.weight"][f][:, r])
    assert torch.equal(s[sp + "ffn.lin2.weight"], t[tp + "output.dense.weight"][r][:, f])
    assert torch.equal(s[sp + "output_layer_norm.bias"], t[tp + "output.LayerNorm.bias"][r])
    assert torch.equal(
        s["vocab_transform.weight"], t["cls.predictions.transform.dense.weight"][r][:, r]
    )
    assert torch.equal(s["vocab_projector.bias"], t["cls.predictions.bias"])


def test_narrow_roberta_student_by_selection(tmp_path: Path) -> None:
    from transformers import RobertaConfig, RobertaForMaskedLM

    cfg = RobertaConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=80,
    )  # fmt: skip
    torch.manual_seed(0)
    RobertaForMaskedLM(cfg).save_pretrained(str(tmp_path / "roberta"))
    teacher = load_teacher(str(tmp_path / "roberta"), "sdpa", need_head=True)
    student, _ = build_student(teacher, 2, None, "select", "sdpa", None, hidden=16)
    assert student.family == "roberta" and student.config.hidden_size == 16
    s, t = student.model.state_dict(), teacher.model.state_dict()
    assert torch.equal(
        s["roberta.encoder.layer.1.attention.self.query.weight"],
        t["roberta.encoder.layer.3.attention.self.query.weight"][:16][:, ::2],
    )
    last, _ = student.encode(torch.randint(4, 120, (2, 9)), None)
    assert student.head(last[:, 0]).shape == (2, 120)
