"""Every model family through the same paths: ModernBERT, DeBERTa-v3, ELECTRA and EuroBERT, each
a tiny random model of the real transformers class over a real (WordPiece) tokenizer.

In process: the uniform adapter gives the model's own logits; a ``select`` (and ``teacher``)
student at the teacher's full shape is the teacher (every weight mapped); a half-depth student
keeps its teacher layers, and ModernBERT's global/local pattern; Q/K/V as captured are what the
attention uses (rotary applied, grouped K/V repeated), so TinyBERT's maps equal the model's own
attention where the loss is allowed, and it is refused in one line where not; narrower
``select`` students keep consistent sub-tensors, and what cannot be cut is refused. The teacher
cache equals the online teacher. Launched (2 ranks, gloo): a run with the DistilBERT losses and
MiniLMv2 relations (and TinyBERT attention where defined), exported and filling a mask; exact
resume (slow tier).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from family_models import NEW_FAMILIES, SIZES, make_family_teacher
from pipeline_helpers import base_args, check_ok, launch, losses, step_records

from data_prep.errors import UserError
from pipeline.config.schema import LossConfig
from pipeline.model.alignment import capture_qkv, resolve_alignment
from pipeline.model.masked_lm import MaskedLM, Shape, load_teacher
from pipeline.model.student import build_student

ATTENTION_ALLOWED = {"modernbert": [0, 2], "electra": [0, 1, 2, 3], "eurobert": [0, 1, 2, 3]}


@pytest.fixture(scope="module")
def teachers(
    tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: Path
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family_teachers")
    return {
        kind: make_family_teacher(root / kind, wordpiece_tokenizer, kind) for kind in NEW_FAMILIES
    }


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 3900, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # a padded sequence
    return ids, mask


def logits(model: MaskedLM, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    model.model.eval()
    with torch.no_grad():
        return model.head(model.encode(ids, mask)[0])


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_the_adapter_gives_the_models_own_logits(teachers: dict[str, Path], kind: str) -> None:
    teacher = load_teacher(str(teachers[kind]), "sdpa", need_head=True)
    assert teacher.family == kind and teacher.kind.name == kind
    ids, mask = batch()
    with torch.no_grad():
        reference = teacher.model(input_ids=ids, attention_mask=mask).logits
        _, states = teacher.encode(ids, mask, all_layers=True)
    assert states is not None and len(states) == 5
    assert torch.allclose(logits(teacher, ids, mask), reference, atol=1e-5)


@pytest.mark.parametrize("kind", NEW_FAMILIES)
@pytest.mark.parametrize("init", ["teacher", "select"])
def test_a_full_shape_student_is_the_teacher(
    teachers: dict[str, Path], kind: str, init: str
) -> None:
    """Every weight is mapped: at the teacher's depth and width the student computes its logits."""
    teacher = load_teacher(str(teachers[kind]), "sdpa", need_head=True)
    student, layer_map = build_student(
        teacher, 4, None, init, "sdpa", None, hidden=32, heads=4, intermediate=64
    )
    assert layer_map == [0, 1, 2, 3] and student.family == kind
    ids, mask = batch()
    assert torch.allclose(logits(student, ids, mask), logits(teacher, ids, mask), atol=1e-5)


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_a_half_depth_student_keeps_its_teacher_layers(
    teachers: dict[str, Path], kind: str
) -> None:
    teacher = load_teacher(str(teachers[kind]), "sdpa", need_head=True)
    student, layer_map = build_student(teacher, 0, None, "teacher", "sdpa", None)
    assert layer_map == [0, 3] and student.num_layers == 2
    for j, t in enumerate(layer_map):
        s_modules = [m for m, _ in student.qkv_sources(j)] + list(student.projections_out(j))
        t_modules = [m for m, _ in teacher.qkv_sources(t)] + list(teacher.projections_out(t))
        for s_mod, t_mod in zip(s_modules, t_modules, strict=True):
            assert torch.equal(s_mod.weight, t_mod.weight)
    if kind == "modernbert":  # the global/local pattern of the chosen layers
        types = teacher.config.layer_types
        assert types == ["full_attention", "sliding_attention"] * 2
        assert student.config.layer_types == [types[0], types[3]]
        for j, t in enumerate(layer_map):
            s_att = student.model.model.layers[j].attn
            assert s_att.sliding_window == teacher.model.model.layers[t].attn.sliding_window


def attention_from_qkv(
    q: torch.Tensor, k: torch.Tensor, heads: int, mask: torch.Tensor
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) per head over the non-pad keys: [B, h, S, S]."""
    b, s, width = q.shape
    d = width // heads
    qh = q.view(b, s, heads, d).transpose(1, 2)
    kh = k.view(b, s, heads, d).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / d**0.5
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_captured_qkv_are_what_the_attention_uses(teachers: dict[str, Path], kind: str) -> None:
    """Q and K as captured (rotary applied, K/V heads repeated) give the model's own attention
    probabilities at every layer where the attention loss is allowed; elsewhere it is refused
    in one line that points to the relations."""
    teacher = load_teacher(str(teachers[kind]), "eager", need_head=True)
    ids, mask = batch()
    allowed = ATTENTION_ALLOWED.get(kind, [])
    layers = dict.fromkeys(range(4), "qkv")
    with torch.no_grad(), capture_qkv(teacher, layers) as cap:
        encoder = getattr(teacher.model, teacher.encoder_attr)
        out = encoder(input_ids=ids, attention_mask=mask, output_attentions=True)
    for layer in range(4):
        q, k, v = (cap[layer, x] for x in "qkv")
        assert q.shape == k.shape == v.shape == (2, 24, 32)
        if layer in allowed:
            mine = attention_from_qkv(q, k, 4, mask)
            theirs = out.attentions[layer]
            rows = mask.bool()  # the attention of pad queries is not defined the same way
            assert torch.allclose(mine[0], theirs[0], atol=1e-5), layer
            assert torch.allclose(mine[1][:, rows[1]], theirs[1][:, rows[1]], atol=1e-5), layer
    shape = Shape.of(teacher.config)
    refusal = teacher.kind.attention_refused(teacher.config, [0, 1, 2, 3])
    attn = LossConfig(alpha_attn=1.0)
    if len(allowed) == 4:
        assert refusal is None
        resolve_alignment(attn, shape, shape, [0, 1, 2, 3], "teacher", attention_refusal=refusal)
        return
    with pytest.raises(UserError, match=r"loss\.alpha_relation") as err:
        resolve_alignment(attn, shape, shape, [0, 1, 2, 3], "teacher", attention_refusal=refusal)
    assert "\n" not in str(err.value)
    if allowed:  # ModernBERT: a layer map of global layers only is allowed
        assert teacher.kind.attention_refused(teacher.config, allowed) is None


@pytest.mark.parametrize("kind", ["modernbert", "deberta-v2", "electra"])
def test_a_narrower_student_is_cut_consistently(teachers: dict[str, Path], kind: str) -> None:
    """3 heads of the teacher's 4 (24 wide), FFN 48, 2 layers: every student tensor is the
    teacher's at the selected rows and columns (the Q/K/V rows of the kept heads in each third
    of ModernBERT's fused Wqkv); the student runs."""
    teacher = load_teacher(str(teachers[kind]), "sdpa", need_head=True)
    student, layer_map = build_student(
        teacher, 2, None, "select", "sdpa", None, hidden=24, heads=3, intermediate=48
    )
    heads = [0, 1, 2]  # spread(4, 3)
    rows = [h * 8 + d for h in heads for d in range(8)]
    residual = [i * 32 // 24 for i in range(24)]
    for j, t in enumerate(layer_map):
        (s_first, _), *_ = student.qkv_sources(j)
        (t_first, _), *_ = teacher.qkv_sources(t)
        blocks = 3 if kind == "modernbert" else 1
        kept = [b * 32 + r for b in range(blocks) for r in rows]
        expected = t_first.weight[kept][:, residual]
        assert torch.equal(s_first.weight, expected)
    ids, mask = batch()
    assert logits(student, ids, mask).shape == (2, 24, teacher.config.vocab_size)


def test_what_a_family_cannot_cut_is_refused_in_one_line(teachers: dict[str, Path]) -> None:
    euro = load_teacher(str(teachers["eurobert"]), "sdpa", need_head=True)
    with pytest.raises(UserError, match="keeps every head") as err:
        build_student(euro, 2, None, "select", "sdpa", None, hidden=16, heads=2)
    assert "\n" not in str(err.value)
    student, _ = build_student(euro, 2, None, "select", "sdpa", None, intermediate=32)
    assert student.config.intermediate_size == 32 and student.config.num_key_value_heads == 2
    modern = load_teacher(str(teachers["modernbert"]), "sdpa", need_head=True)
    with pytest.raises(UserError, match="rotary"):  # a head of 4 dimensions out of 8
        build_student(modern, 2, None, "select", "sdpa", None, hidden=16, heads=4)
    electra = load_teacher(str(teachers["electra"]), "sdpa", need_head=True)
    with pytest.raises(UserError, match="embedding projection"):  # E = 16
        build_student(electra, 2, None, "select", "sdpa", None, hidden=16, heads=2)
    # a random student of any width is always possible, with a consistent K/V grouping
    student, _ = build_student(euro, 2, None, "random", "sdpa", None, hidden=16, heads=2)
    assert student.config.num_key_value_heads == 1 and student.config.head_dim == 8


def test_an_electra_discriminator_has_no_mlm_head_for_the_logit_losses(
    tmp_path: Path, wordpiece_tokenizer: Path
) -> None:
    from transformers import AutoConfig, AutoTokenizer, ElectraForPreTraining

    tok = AutoTokenizer.from_pretrained(str(wordpiece_tokenizer))
    cfg = AutoConfig.for_model("electra", vocab_size=len(tok), **SIZES, embedding_size=16)
    folder = tmp_path / "discriminator"
    ElectraForPreTraining(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    with pytest.raises(UserError, match="this is an encoder checkpoint, not a masked LM") as err:
        load_teacher(str(folder), "sdpa", need_head=True)
    assert "generator_predictions" in str(err.value) and "\n" not in str(err.value)
    encoder_only = load_teacher(str(folder), "sdpa", need_head=False)  # hidden-state losses
    assert not encoder_only.has_head


def test_unknown_and_remote_code_families_are_refused_in_one_line(
    tmp_path: Path, wordpiece_tokenizer: Path
) -> None:
    albert = make_family_teacher(
        tmp_path / "albert", wordpiece_tokenizer, "bert", num_hidden_layers=1
    )
    raw = json.loads((albert / "config.json").read_text())
    (albert / "config.json").write_text(json.dumps({**raw, "model_type": "albert"}))
    with pytest.raises(UserError, match="model type 'albert' is not supported") as err:
        load_teacher(str(albert), "sdpa", need_head=True)
    assert "modernbert" in str(err.value) and "\n" not in str(err.value)
    remote = tmp_path / "neobert"
    remote.mkdir()
    (remote / "config.json").write_text(
        json.dumps(
            {"model_type": "neobert", "auto_map": {"AutoModelForMaskedLM": "model.NeoBERTLMHead"}}
        )
    )
    (remote / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="code shipped with the model") as err:
        load_teacher(str(remote), "sdpa", need_head=True)
    assert "\n" not in str(err.value)


# --- the teacher cache ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind",
    [pytest.param(k, marks=[] if k == "modernbert" else pytest.mark.slow) for k in NEW_FAMILIES],
)
def test_the_cache_holds_the_online_teachers_logits(
    teachers: dict[str, Path], small_data_dir: Path, tmp_path: Path, kind: str
) -> None:
    from test_cache_teacher import build, online_batch, open_run_cache, run_config

    from data_prep.manifest import load_manifest

    out = tmp_path / "cache"
    build(small_data_dir, teachers[kind], out, "--top-k", 8, "--values", "fp32", "--views", 1)
    cfg = run_config(small_data_dir, teachers[kind], out)
    cache = open_run_cache(cfg, load_manifest(small_data_dir))
    data_batch, rows, online = online_batch(small_data_dir, teachers[kind], cfg, 1, cache)
    ids, logp = cache.batch_targets(data_batch)
    top = torch.log_softmax(online.float() / cfg.loss.temperature, -1).topk(8)
    assert ids.shape == (len(rows), 8)
    assert torch.equal(ids[:, 0], top.indices[:, 0])
    assert torch.allclose(logp, top.values, atol=1e-4)


# --- launched: 2 ranks on gloo ----------------------------------------------------------------
def family_run_args(teacher: Path, data: Path, out: Path, kind: str, **extra: Any) -> list[str]:
    """The DistilBERT losses, TinyBERT's hidden states and MiniLMv2 relations, plus TinyBERT
    attention where defined."""
    weights: dict[str, Any] = {
        "--loss.alpha_ce": 1.0,
        "--loss.alpha_mlm": 1.0,
        "--loss.alpha_cos": 1.0,
        "--loss.alpha_mse": 1.0,
        "--loss.alpha_relation": 1.0,
        "--loss.alpha_hidden": 1.0,
    }
    if kind in ("electra", "eurobert"):
        weights["--loss.alpha_attn"] = 1.0
    return base_args(teacher, data, out, **weights, **extra)


@pytest.mark.parametrize(
    "kind",
    [  # ELECTRA and EuroBERT (~12 s each) in the slow set: BERT-like and rotary+GQA Q/K/V are
        # checked in process (test_captured_qkv_are_what_the_attention_uses)
        pytest.param(k, marks=[] if k in ("modernbert", "deberta-v2") else pytest.mark.slow)
        for k in NEW_FAMILIES
    ],
)
def test_two_rank_distillation_exports_a_model_that_fills_masks(
    teachers: dict[str, Path], small_data_dir: Path, tmp_path: Path, kind: str
) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from pipeline.export import main as export_main

    run = tmp_path / "run"
    check_ok(launch(family_run_args(teachers[kind], small_data_dir, run, kind), nproc=2))
    records = step_records(run)
    assert [r["step"] for r in records] == list(range(1, 7))
    names = {"ce", "mlm", "cos", "mse", "hid", "rel"}
    for record in records:
        assert all(torch.isfinite(torch.tensor(record[n])) for n in names if n in record)
    assert names <= set(records[-1]), sorted(records[-1])
    hf = tmp_path / "hf"
    export_main(["--run", str(run), "--output", str(hf)])
    model = AutoModelForMaskedLM.from_pretrained(str(hf))
    assert model.config.model_type == kind and model.config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(str(hf))
    preds = pipeline("fill-mask", model=model, tokenizer=tok)(
        f"she was {tok.mask_token} to see him."
    )
    assert len(preds) == 5 and all(p["token_str"] for p in preds)
    assert kind in (hf / "README.md").read_text()
    from pipeline.evaluate import main as evaluate_main

    scores = tmp_path / "eval.json"
    evaluate_main(
        ["--model", str(hf), "--data", str(small_data_dir), "--teacher", str(teachers[kind]),
         "--samples", "16", "--json", str(scores)]
    )  # fmt: skip
    mlm = json.loads(scores.read_text())["mlm"]
    assert mlm["masked_tokens"] > 0 and 0 <= mlm["mlm_accuracy"] <= 1 and 0 <= mlm["agreement"] <= 1


RESUMABLE = {"--max-steps": 6, "--save-every": 3, "--model.dropout": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_a_family_run_resumes_exactly(
    teachers: dict[str, Path], small_data_dir: Path, tmp_path: Path, kind: str
) -> None:
    """6 steps straight, and stopped after 3 then resumed to 6 from the step-3 checkpoint: the
    same losses, bit for bit; for ModernBERT also resumed on 1 rank (the universal checkpoint)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = family_run_args(teachers[kind], small_data_dir, straight, kind, **RESUMABLE)
    check_ok(launch(args, nproc=2))
    stop = {**RESUMABLE, "--train.stop_after_steps": 3}
    check_ok(
        launch(family_run_args(teachers[kind], small_data_dir, resumed, kind, **stop), nproc=2)
    )
    moved = tmp_path / "moved"
    if kind == "modernbert":
        shutil.copytree(resumed, moved)
    args = family_run_args(teachers[kind], small_data_dir, resumed, kind, **RESUMABLE)
    check_ok(launch(args, nproc=2))
    assert losses(resumed) == losses(straight)
    if kind != "modernbert":
        return
    result = launch(family_run_args(teachers[kind], small_data_dir, moved, kind, **RESUMABLE))
    check_ok(result)
    assert "universal" in result.stdout
    got, want = dict(losses(moved)), dict(losses(straight))
    for step in range(4, 7):
        assert got[step] == pytest.approx(want[step], rel=1e-4), step


# --- a student of another family over the teacher's tokenizer ---------------------------------
@pytest.mark.parametrize(
    ("teacher_kind", "student_kind"),
    [("modernbert", "bert"), ("electra", "modernbert"), ("eurobert", "deberta-v2")],
)
def test_a_student_of_another_family_shares_the_teachers_tokenizer(
    teachers: dict[str, Path], teacher_kind: str, student_kind: str
) -> None:
    teacher = load_teacher(str(teachers[teacher_kind]), "sdpa", need_head=True)
    student, layer_map = build_student(
        teacher, 2, None, "random", "sdpa", None, student_type=student_kind
    )
    expected = "distilbert" if student_kind == "bert" else student_kind  # BERT-shaped: no types
    assert student.family == expected and layer_map == [0, 3]
    s, t = student.config, teacher.config
    assert (s.vocab_size, s.max_position_embeddings) == (t.vocab_size, t.max_position_embeddings)
    assert s.pad_token_id == t.pad_token_id
    ids, mask = batch()
    assert logits(student, ids, mask).shape == (2, 24, t.vocab_size)
    with pytest.raises(UserError, match=r"set model\.init random") as err:
        build_student(teacher, 2, None, "select", "sdpa", None, student_type=student_kind)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="model type 'albert' is not supported"):
        build_student(teacher, 2, None, "random", "sdpa", None, student_type="albert")


def test_a_bert_shaped_student_learns_from_a_modernbert_teacher(
    teachers: dict[str, Path], small_data_dir: Path, tmp_path: Path
) -> None:
    """2 ranks: a ModernBERT teacher, a DistilBERT-shaped student from scratch over its
    tokenizer, with the logit, MLM, hidden-state and relation losses."""
    run = tmp_path / "run"
    extra = {
        "--model.student_type": "bert",
        "--model.init": "random",
        "--loss.alpha_relation": 1.0,
        "--loss.alpha_mse": 1.0,
    }
    check_ok(launch(base_args(teachers["modernbert"], small_data_dir, run, **extra), nproc=2))
    first, last = step_records(run)[0], step_records(run)[-1]
    assert {"ce", "mlm", "cos", "mse", "rel"} <= set(last)
    assert last["ce"] < first["ce"]


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_pruning_scores_every_family_and_keeps_the_teacher_at_its_shape(
    teachers: dict[str, Path], kind: str
) -> None:
    """Importance over each family's heads, FFN neurons and residual norms (not DeBERTa's
    position-table norm); ``prune`` at the full shape is the teacher; narrower, it builds."""
    from pipeline.model.importance import measure_importance

    teacher = load_teacher(str(teachers[kind]), "sdpa", need_head=True)
    ids, mask = batch()
    importance = measure_importance(teacher, [(ids, mask)])
    assert [len(h) for h in importance.heads] == [4] * 4
    assert [len(n) for n in importance.neurons] == [64] * 4 and len(importance.channels) == 32
    assert importance.tokens == int(mask.sum())
    full, _ = build_student(
        teacher, 4, None, "prune", "sdpa", None, 32, 4, 64, importance=importance
    )
    assert torch.allclose(logits(full, ids, mask), logits(teacher, ids, mask), atol=1e-5)
    narrow = {"intermediate": 32} if kind == "eurobert" else {"hidden": 24, "heads": 3}
    student, layer_map = build_student(
        teacher, 2, None, "prune", "sdpa", None, **narrow, layer_map_rule="importance",
        importance=importance,
    )  # fmt: skip
    assert len(layer_map) == 2 and logits(student, ids, mask).shape[-1] == teacher.config.vocab_size


def test_the_dry_run_says_the_family_plan_or_refuses_in_one_line(
    teachers: dict[str, Path], small_data_dir: Path, tmp_path: Path
) -> None:
    """In seconds, before any engine: a ModernBERT plan; DeBERTa with the attention loss refused."""
    from test_dry_run import HEADER, one_error_line

    run = tmp_path / "run"
    args = base_args(teachers["modernbert"], small_data_dir, run, **{"--loss.alpha_relation": 1})
    result = launch([*args, "--train.dry_run"], launcher="python")
    check_ok(result)
    assert HEADER in result.stdout and "student: modernbert, 2 layers x 32 wide" in result.stdout
    assert not run.exists()
    args = base_args(teachers["deberta-v2"], small_data_dir, run, **{"--loss.alpha_attn": 1})
    line = one_error_line(launch([*args, "--train.dry_run"], launcher="python"))
    assert "loss.alpha_attn: DeBERTa's attention adds relative-position terms" in line, line
    assert "loss.alpha_relation" in line and not run.exists()
