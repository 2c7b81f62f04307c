"""prepare(): every file a run reads is checked before any process group, each refusal one line
naming the file and the fix (in process; tests/test_integration_training.py runs the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pipeline_helpers import make_bert_teacher

from data_prep.errors import UserError
from pipeline.config.cli import parse_config
from pipeline.distributed.launch import DistEnv
from pipeline.run.plan import Plan, prepare, resolve_models

REPO = Path(__file__).resolve().parent.parent
ONE_RANK = DistEnv(0, 1, 0, "127.0.0.1", 0, "single")
CPU = torch.device("cpu")
FP32 = str(REPO / "ds_configs" / "zero2_fp32.json")


def _prepare(*argv: str | Path) -> Plan:
    cfg, paths = parse_config([*map(str, argv)])
    return prepare(cfg, paths, resolve_models(cfg), ONE_RANK, CPU)


def _args(teacher: Path, data: Path, out: Path) -> list[str | Path]:
    return ["--teacher", teacher, "--data", data, "--output", out, "--ds-config", FP32,
            "--global-batch-size", "8", "--max-steps", "3"]  # fmt: skip


def test_a_good_plan(tiny_teacher: Path, small_data_dir: Path, tmp_path: Path) -> None:
    plan = _prepare(*_args(tiny_teacher, small_data_dir, tmp_path / "run"))
    assert plan.layer_map == [0, 3] and plan.max_steps == 3
    assert plan.teacher is not None and plan.teacher_cache is None
    assert plan.engine.micro_batch * plan.engine.grad_accum == 8
    assert plan.identity["student"]["n_layers"] == 2
    assert not (tmp_path / "run").exists()  # nothing is written before the process group


def test_no_teacher_forward_when_no_loss_needs_it(
    tiny_teacher: Path, small_data_dir: Path, tmp_path: Path
) -> None:
    plan = _prepare(
        *_args(tiny_teacher, small_data_dir, tmp_path / "run"),
        "--loss.alpha_ce", "0", "--loss.alpha_cos", "0", "--loss.alpha_mlm", "1",
    )  # fmt: skip
    assert plan.teacher is None
    assert any("only initialised the student" in n for n in plan.notes)


def test_epochs_set_the_number_of_steps(
    tiny_teacher: Path, small_data_dir: Path, tmp_path: Path
) -> None:
    n = json.loads((small_data_dir / "manifest.json").read_text())["splits"]["train"]
    plan = _prepare(
        *_args(tiny_teacher, small_data_dir, tmp_path / "run"), "--max-steps", "0",
        "--train.epochs", "2",
    )  # fmt: skip
    assert plan.max_steps == -(-2 * n["num_sequences"] // 8)


def test_refusals_name_the_file_and_the_fix(
    tiny_teacher: Path, small_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"nope: no such data folder.*build_shards"):
        _prepare(*_args(tiny_teacher, tmp_path / "nope", out))
    other = make_bert_teacher(
        tmp_path / "bert_vocab_teacher", REPO / "tests" / "assets" / "bert-base-uncased"
    )
    with pytest.raises(
        UserError, match=r"bert_vocab_teacher: its tokenizer .* differs.*--tokenizer"
    ):
        _prepare(*_args(other, small_data_dir, out))
    with pytest.raises(UserError, match=r"global batch 6 = micro 4 .*--micro-batch-size"):
        _prepare(*_args(tiny_teacher, small_data_dir, out), "--global-batch-size", "6",
                 "--micro-batch-size", "4")  # fmt: skip
    fp16 = REPO / "ds_configs" / "zero2_fp16.json"
    with pytest.raises(UserError, match=r"fp16 is asked for on a CPU.*zero2_bf16.json"):
        _prepare(*_args(tiny_teacher, small_data_dir, out), "--ds-config", fp16)
    small = make_bert_teacher(tmp_path / "short", Path(tiny_teacher), max_positions=32)
    with pytest.raises(UserError, match=r"max_position_embeddings 32 < the data.s seq_len 64"):
        _prepare(*_args(small, small_data_dir, out))
    with pytest.raises(UserError, match="nocache: no such folder"):
        _prepare(*_args(tiny_teacher, small_data_dir, out), "--teacher-cache", tmp_path / "nocache")
    assert not out.exists()


def test_a_narrow_student_from_a_recipe(
    tiny_teacher: Path, small_data_dir: Path, tmp_path: Path
) -> None:
    """The TinyBERT recipe with a student narrower than the tiny teacher: the shape, the
    alignment, the objective's parameters in the checkpoint identity; and a refusal in one line."""
    recipe = REPO / "pipeline" / "recipes" / "tinybert_general.yaml"
    args = [*_args(tiny_teacher, small_data_dir, tmp_path / "run"), "--config", recipe,
            "--model.student_layers", "2", "--model.student_hidden", "16",
            "--model.student_heads", "2", "--model.student_intermediate", "32"]  # fmt: skip
    plan = _prepare(*args)
    assert plan.layer_map == [1, 3]  # the tinybert rule on 4 -> 2
    assert plan.alignment is not None and plan.alignment.attention_groups == 1
    assert plan.identity["student"]["dim"] == 16
    assert plan.identity["objective_params"] == {"embed": [32, 16], "hidden": [32, 16]}
    assert plan.teacher is not None  # hidden and attention losses need the online teacher
    with pytest.raises(UserError, match=r"loss\.alpha_cos compares hidden states directly"):
        _prepare(*args, "--loss.alpha_cos", "1")
