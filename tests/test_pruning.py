"""``model.init prune``: importance scores against a direct computation, the student keeping
exactly the most important parts, the teacher itself at full shape, and a 2-rank run whose
calibration is kept, reused on requeue, reported and exported."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_helpers import REPO, base_args, check_ok, launch, train_env

from data_prep.errors import UserError
from pipeline.model.importance import Importance, measure_importance, top
from pipeline.model.masked_lm import MaskedLM, load_teacher
from pipeline.model.selection import pruned_selection, selection
from pipeline.model.student import Shape, build_student


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 200, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


def _direct(teacher: MaskedLM, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scores computed by hand from the BERT equations, no hooks: every layer's attention
    recomputed from its input hidden states."""
    bert = teacher.model.bert
    keep = mask.bool()
    with torch.no_grad():
        out = bert(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                   output_hidden_states=True)  # fmt: skip
        hs = out.hidden_states
        heads = teacher.config.num_attention_heads
        bias = (1 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        channels = hs[0].abs()[keep].mean(0)
        per_head, per_neuron, block = [], [], []
        for i, layer in enumerate(bert.encoder.layer):
            x = hs[i]
            att = layer.attention
            b, s, w = x.shape
            q, k, v = (
                p(x).view(b, s, heads, w // heads).transpose(1, 2)
                for p in (att.self.query, att.self.key, att.self.value)
            )
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // heads) + bias, -1)
            context = (probs @ v).transpose(1, 2)  # [B, S, heads, d]
            per_head.append(context.norm(dim=-1)[keep].mean(0))
            attn_out = att.output.LayerNorm(att.output.dense(context.reshape(b, s, w)) + x)
            act = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attn_out))
            per_neuron.append(act.abs()[keep].mean(0))
            channels = channels + attn_out.abs()[keep].mean(0) + hs[i + 1].abs()[keep].mean(0)
            cos = torch.nn.functional.cosine_similarity(x, hs[i + 1], dim=-1)
            block.append((1 - cos)[keep].mean())
            assert torch.allclose(layer.output.LayerNorm(layer.output.dense(act) + attn_out),
                                  hs[i + 1], atol=1e-5)  # fmt: skip
    return {"heads": torch.stack(per_head), "neurons": torch.stack(per_neuron),
            "channels": channels, "layers": torch.stack(block)}  # fmt: skip


def test_each_importance_score_equals_a_direct_computation(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "eager", need_head=True)
    ids, mask = _batch()
    got = measure_importance(teacher, [(ids[:2], mask[:2]), (ids[2:], mask[2:])])
    want = _direct(teacher, ids, mask)
    assert got.tokens == int(mask.sum()) and got.sequences == 3
    for name in ("heads", "neurons", "channels", "layers"):
        assert torch.allclose(torch.tensor(getattr(got, name)).float(), want[name], rtol=1e-4), name
    # DistilBERT teachers are measured through their own modules
    student, _ = build_student(teacher, 4, [0, 1, 2, 3], "teacher", "eager", None)
    again = measure_importance(student.eval(), [(ids, mask)])
    assert torch.allclose(torch.tensor(again.heads), torch.tensor(got.heads), rtol=1e-4)
    assert torch.allclose(torch.tensor(again.layers), torch.tensor(got.layers), atol=1e-5)


def _scores(teacher: MaskedLM, seed: int) -> Importance:
    g = torch.Generator().manual_seed(seed)
    c = Shape.of(teacher.config)
    return Importance(
        heads=torch.rand(c.layers, c.heads, generator=g).tolist(),
        neurons=torch.rand(c.layers, c.intermediate, generator=g).tolist(),
        channels=torch.rand(c.hidden, generator=g).tolist(),
        layers=torch.rand(c.layers, generator=g).tolist(),
        sequences=1,
        tokens=1,
    )


def test_the_pruned_student_keeps_the_most_important_parts(tiny_teacher: Path) -> None:
    """Teacher 4 layers, 32 wide, 2 heads of 16, FFN 64; student 2 layers, 16 wide, 1 head of 16,
    FFN 24: every kept index is a top-scored one, in the teacher's order, per layer."""
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    imp = _scores(teacher, 3)
    student, layer_map = build_student(
        teacher, 2, None, "prune", "sdpa", None, hidden=16, heads=1, intermediate=24,
        layer_map_rule="importance", importance=imp,
    )  # fmt: skip
    assert layer_map == top(imp.layers, 2) != [0, 3]  # layers by block importance
    t, s = teacher.model.state_dict(), student.model.state_dict()
    r = torch.tensor(top(imp.channels, 16))
    assert torch.equal(
        s["distilbert.embeddings.word_embeddings.weight"],
        t["bert.embeddings.word_embeddings.weight"][:, r],
    )
    for j, tl in enumerate(layer_map):
        head = top(imp.heads[tl], 1)[0]
        a = torch.arange(head * 16, head * 16 + 16)
        f = torch.tensor(top(imp.neurons[tl], 24))
        tp, sp = f"bert.encoder.layer.{tl}.", f"distilbert.transformer.layer.{j}."
        assert torch.equal(
            s[sp + "attention.q_lin.weight"], t[tp + "attention.self.query.weight"][a][:, r]
        )
        assert torch.equal(
            s[sp + "attention.out_lin.weight"], t[tp + "attention.output.dense.weight"][r][:, a]
        )
        assert torch.equal(s[sp + "ffn.lin1.bias"], t[tp + "intermediate.dense.bias"][f])
        assert torch.equal(s[sp + "ffn.lin2.weight"], t[tp + "output.dense.weight"][r][:, f])
        assert torch.equal(
            s[sp + "sa_layer_norm.weight"], t[tp + "attention.output.LayerNorm.weight"][r]
        )
    # a given layer map is kept, the default rule's otherwise; other neurons than selection's
    _, given = build_student(teacher, 2, [1, 2], "prune", "sdpa", None, hidden=16, importance=imp)
    assert given == [1, 2]
    _, default = build_student(teacher, 2, None, "prune", "sdpa", None, hidden=16, importance=imp)
    assert default == [0, 3]
    with pytest.raises(UserError, match=r"needs model\.init prune"):
        build_student(teacher, 2, None, "select", "sdpa", None, hidden=16,
                      layer_map_rule="importance")  # fmt: skip
    t_shape, s_shape = Shape.of(teacher.config), Shape(2, 16, 1, 24)
    assert pruned_selection(t_shape, s_shape, imp, [1, 2]).ffn != selection(t_shape, s_shape).ffn


def test_at_the_teachers_full_shape_the_pruned_student_is_the_teacher(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "eager", need_head=True)
    imp = _scores(teacher, 5)
    pruned, layer_map = build_student(teacher, 4, None, "prune", "eager", None, importance=imp)
    copied, _ = build_student(teacher, 4, [0, 1, 2, 3], "teacher", "eager", None)
    assert layer_map == [0, 1, 2, 3]
    p, c = pruned.model.state_dict(), copied.model.state_dict()
    assert p.keys() == c.keys() and all(torch.equal(p[k], c[k]) for k in p)
    ids, mask = _batch()
    with torch.no_grad():
        t_last, _ = teacher.encode(ids, mask)
        s_last, _ = pruned.eval().encode(ids, mask)
    assert torch.allclose(s_last, t_last, atol=1e-5)


def test_prune_refuses_a_student_larger_than_the_teacher(tiny_teacher: Path) -> None:
    teacher = load_teacher(str(tiny_teacher), "sdpa", need_head=True)
    with pytest.raises(UserError, match=r"model\.init prune takes a subset"):
        build_student(teacher, 2, None, "prune", "sdpa", None, hidden=16, heads=4,
                      importance=_scores(teacher, 1))  # fmt: skip


def test_a_pruned_run_reports_what_it_kept_and_a_requeue_reuses_the_calibration(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    run = tmp_path / "run"
    shape = {"--model.init": "prune", "--model.student_hidden": 16, "--model.student_heads": 1,
             "--model.prune_samples": 24, "--loss.alpha_cos": 0, "--save-every": 4}  # fmt: skip
    first = launch(
        base_args(tiny_teacher, small_data_dir, run, **{**shape, "--max-steps": 4}), nproc=2
    )
    check_ok(first)
    assert "pruning: measured the teacher's importance on 24 sequences" in first.stdout
    scores = run / "pruning" / "importance.json"
    body = scores.read_bytes()
    kept = json.loads((run / "pruning" / "kept.json").read_text())
    assert kept["calibration"]["sequences"] == 24 and kept["channels_kept"] == 16
    assert len(kept["per_layer"]) == 2 and all(len(r["heads"]) == 1 for r in kept["per_layer"])
    assert 16 / 32 <= kept["channels_share"] <= 1
    again = launch(
        base_args(tiny_teacher, small_data_dir, run, **{**shape, "--max-steps": 6}), nproc=2
    )
    check_ok(again)
    assert "pruning: reused the importance scores of 24 sequences" in again.stdout
    assert "global_step4" in again.stdout and scores.read_bytes() == body
    out = tmp_path / "hf"
    export = subprocess.run([sys.executable, "-m", "pipeline.export", "--run", str(run), "--output", str(out)],
                            cwd=REPO, env=train_env(), capture_output=True, text=True)  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert "## Pruning" in card and "Importance measured on 24 training sequences" in card
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.dim == 16 and model.config.n_heads == 1
    preds = pipeline("fill-mask", model=model, tokenizer=tok)(
        f"she was {tok.mask_token} to see him."
    )
    assert len(preds) == 5


def test_roberta_teachers_are_measured_and_pruned_through_their_own_modules(tmp_path: Path) -> None:
    from transformers import RobertaConfig, RobertaForMaskedLM

    cfg = RobertaConfig(
        vocab_size=220, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=80,
    )  # fmt: skip
    torch.manual_seed(0)
    RobertaForMaskedLM(cfg).save_pretrained(str(tmp_path / "roberta"))
    teacher = load_teacher(str(tmp_path / "roberta"), "sdpa", need_head=True)
    imp = measure_importance(teacher, [_batch()])
    assert [len(h) for h in imp.heads] == [2] * 4 and len(imp.channels) == 32
    assert all(len(n) == 64 for n in imp.neurons) and all(b > 0 for b in imp.layers)
    student, layer_map = build_student(
        teacher, 2, None, "prune", "sdpa", None, hidden=16, importance=imp
    )
    assert student.family == "roberta" and student.config.hidden_size == 16
    t, s = teacher.model.state_dict(), student.model.state_dict()
    r, f = torch.tensor(top(imp.channels, 16)), torch.tensor(top(imp.neurons[layer_map[0]], 32))
    tp = f"roberta.encoder.layer.{layer_map[0]}."
    assert torch.equal(s["roberta.encoder.layer.0.intermediate.dense.weight"],
                       t[tp + "intermediate.dense.weight"][f][:, r])  # fmt: skip
    assert torch.equal(s["lm_head.dense.weight"], t["lm_head.dense.weight"][r][:, r])
