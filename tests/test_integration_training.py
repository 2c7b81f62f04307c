"""pipeline.train end to end on CPU: 2-rank ZeRO-2 runs, MLM-only mode, bad input as a user sees it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import (
    REPO,
    base_args,
    check_ok,
    eval_records,
    launch,
    losses,
    step_records,
)

BF16 = str(REPO / "ds_configs" / "zero2_bf16.json")


def test_two_rank_zero2_distillation_lowers_the_loss(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    run = tmp_path / "run"
    args = base_args(tiny_teacher, small_data_dir, run, **{
        "--max-steps": 16, "--ds-config": BF16, "--lr": 2e-3, "--eval-every": 8,
        "--loss.alpha_mse": 1.0, "--save-every": 16, "--masking.smoothing": 0,
    })  # fmt: skip
    result = launch(args, nproc=2)
    check_ok(result)
    records = step_records(run)
    assert [r["step"] for r in records] == list(range(1, 17))
    for key in (
        "loss",
        "ce",
        "mlm",
        "cos",
        "mse",
        "lr",
        "consumed_samples",
        "tokens_per_s",
        "grad_norm",
    ):
        assert key in records[0], key
    assert records[-1]["consumed_samples"] == 16 * 8
    first = sum(r["loss"] for r in records[:3]) / 3
    last = sum(r["loss"] for r in records[-3:]) / 3
    assert last < first * 0.98, (first, last)
    evals = eval_records(run)
    assert [e["step"] for e in evals] == [8, 16]
    assert {"mlm_loss", "mlm_accuracy", "agreement", "kl"} <= set(evals[0]["eval"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["resolved"]["world_size"] == 2
    assert resolved["resolved"]["micro_batch_size"] * resolved["resolved"]["grad_accum"] * 2 == 8
    assert resolved["resolved"]["ds_config"]["train_batch_size"] == 8
    assert (run / "checkpoints" / "latest").read_text() == "global_step16"
    assert "step 16/16" in result.stdout


def test_mlm_only_training_of_a_teacher(
    tmp_path: Path, wordpiece_tokenizer: Path, small_data_dir: Path
) -> None:
    from transformers import AutoTokenizer, BertConfig

    cfg = BertConfig(
        vocab_size=len(AutoTokenizer.from_pretrained(str(wordpiece_tokenizer))),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    cfg.to_json_file(str(tmp_path / "bert.json"))
    run = tmp_path / "teacher_run"
    check_ok(
        launch(
            base_args(
                None,
                small_data_dir,
                run,
                **{
                    "--model": tmp_path / "bert.json",
                    "--max-steps": 20,
                    "--lr": 2e-2,
                    "--masking.smoothing": 0,
                },
            ),
            launcher="python",
        )
    )
    records = step_records(run)
    assert set(records[0]) >= {"loss", "mlm"} and "ce" not in records[0]
    first = sum(r["loss"] for r in records[:3]) / 3
    last = sum(r["loss"] for r in records[-3:]) / 3
    assert last < first - 0.1, (first, last)
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["model_type"] == "bert" and saved["num_hidden_layers"] == 2


def _fails(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_bad_input_fails_in_one_line(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """As a user sees it: exit 2, one line naming the problem, no traceback, nothing written.
    (Every other refusal is tested in process: tests/test_config.py, test_plan.py, test_ds_config.py.)"""
    out = tmp_path / "run"
    _fails(
        launch(base_args(tiny_teacher, tmp_path / "nope", out), launcher="python"),
        "nope",
        "build_shards",
    )
    _fails(
        launch(
            base_args(tiny_teacher, small_data_dir, out, **{"--loss.alpha_ce": "lots"}),
            launcher="python",
        ),
        "loss.alpha_ce",
    )
    assert not out.exists()


def test_bad_input_fails_on_every_rank_without_hanging(tmp_path: Path, tiny_teacher: Path) -> None:
    result = launch(
        base_args(tiny_teacher, tmp_path / "missing", tmp_path / "run"), nproc=2, timeout=120
    )
    assert result.returncode != 0
    assert result.stderr.count("pipeline.train: error:") == 2


@pytest.mark.slow
def test_compiled_encoders_give_the_eager_losses(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """--model.compile true compiles both encoders; the losses stay those of eager mode."""
    runs = {}
    for mode in ("false", "true"):
        runs[mode] = tmp_path / f"compile_{mode}"
        args = base_args(
            tiny_teacher,
            small_data_dir,
            runs[mode],
            **{"--max-steps": 3, "--model.compile": mode, "--model.dropout": 0.0},
        )
        check_ok(launch(args, launcher="python", timeout=600))
    eager, compiled = losses(runs["false"]), losses(runs["true"])
    assert [s for s, _ in compiled] == [1, 2, 3]
    for (_, a), (_, b) in zip(eager, compiled):
        assert b == pytest.approx(a, rel=1e-4)


@pytest.mark.slow  # ~37 s: blends in process in test_corpus.py/test_config.py;
# exact resume and cache training: test_integration_resume.py, test_cache_teacher.py
def test_a_blend_trains_in_its_order_and_resumes_exactly_from_a_cache(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path, second_data_dir: Path
) -> None:
    """--data 0.25:A 0.75:B on 2 ranks: each source's share in metrics.jsonl, and a run from a
    teacher cache built over both sources, stopped after 3 steps and resumed, has every loss of
    the uninterrupted online run (the cache follows the blend's order and views)."""
    from pipeline.cache_teacher.__main__ import main as cache_teacher

    blend = [f"0.25:{small_data_dir}", f"0.75:{second_data_dir}"]
    cache = tmp_path / "cache"
    cache_teacher(["--data", str(small_data_dir), str(second_data_dir), "--teacher",
                   str(tiny_teacher), "--output", str(cache), "--top-k", "4000", "--values",
                   "fp32", "--quiet"])  # fmt: skip
    common = {"--max-steps": 6, "--loss.alpha_cos": 0, "--save-every": 3, "--data": None}
    online, cached = tmp_path / "online", tmp_path / "cached"
    check_ok(
        launch(
            [*base_args(tiny_teacher, small_data_dir, online, **common), "--data", *blend], nproc=2
        )
    )
    args = [*base_args(tiny_teacher, small_data_dir, cached, **common), "--data", *blend,
            "--teacher-cache", str(cache)]  # fmt: skip
    first = launch([*args, "--train.stop_after_steps", "3"], nproc=2)
    check_ok(first)
    assert "no teacher forward" in first.stdout and "data: 25% " in first.stdout
    check_ok(launch(args, nproc=2))
    want, got = dict(losses(online)), dict(losses(cached))
    assert got.keys() == want.keys() == set(range(1, 7))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5), step
    shares = step_records(online)[-1]["consumed_per_source"]
    assert list(shares.values()) == [12, 36]  # 6 steps x 8 sequences, 1:3


# (recipe, student shape and init on the 4 x 32 (2 heads of 16) tiny teacher, its loss terms)
RECIPES = {
    "tinybert_general": (
        {"--model.student_layers": 2, "--model.student_hidden": 16, "--model.student_heads": 2,
         "--model.student_intermediate": 32, "--model.init": "select"},
        ("hid", "att"),
    ),
    "minilmv2": (
        {"--model.student_layers": 2, "--model.student_hidden": 24, "--model.student_heads": 3,
         "--model.student_intermediate": 48, "--model.init": "random"},
        ("rel", "rel_qq", "rel_kk", "rel_vv"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_two_rank_recipes_lower_their_losses(
    recipe: str, tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """Each distillation recipe on 2 ranks, a narrower student: every term of the recipe falls;
    the run validates, exports (without the projections) and evaluates."""
    from pipeline.evaluate import main as evaluate_main
    from pipeline.publish.folder import export

    shape, keys = RECIPES[recipe]
    run = tmp_path / recipe
    args = base_args(tiny_teacher, small_data_dir, run, **{
        "--max-steps": 16, "--ds-config": BF16, "--lr": 3e-3, "--eval-every": 16,
        "--save-every": 16, "--masking.smoothing": 0, "--train.log_every": 1, **shape,
    })  # fmt: skip
    result = launch(["--config", str(REPO / "pipeline" / "recipes" / f"{recipe}.yaml"), *args], 2)
    check_ok(result)
    records = step_records(run)
    assert [r["step"] for r in records] == list(range(1, 17))
    for key in (*keys, "loss"):
        first = sum(r[key] for r in records[:3]) / 3
        last = sum(r[key] for r in records[-3:]) / 3
        assert last < first * 0.95, (key, first, last)
    assert not {"ce", "mlm", "cos", "mse"} & set(records[0])
    terms = keys[0] if recipe == "minilmv2" else "hid"
    assert f"{terms}=" in result.stdout  # the progress line shows the recipe's terms
    assert {"mlm_loss", "mlm_accuracy", "agreement"} <= set(eval_records(run)[-1]["eval"])
    saved = json.loads((run / "model" / "config.json").read_text())
    assert (saved["dim"], saved["n_heads"], saved["n_layers"]) == (
        shape["--model.student_hidden"], shape["--model.student_heads"], 2,
    )  # fmt: skip
    out = export(run, None, tmp_path / "hf")
    from safetensors.torch import load_file

    exported = load_file(str(out / "model.safetensors"))
    assert not any("projections" in k for k in exported)
    assert exported["distilbert.embeddings.word_embeddings.weight"].shape[1] == saved["dim"]
    evaluate_main(["--model", str(out), "--data", str(small_data_dir), "--samples", "16",
                   "--json", str(tmp_path / "eval.json")])  # fmt: skip
    assert 0 <= json.loads((tmp_path / "eval.json").read_text())["mlm"]["mlm_accuracy"] <= 1
