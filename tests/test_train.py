"""pipeline.train end to end on CPU: 2-rank ZeRO-2 runs, launchers, MLM-only mode, bad input."""

from __future__ import annotations

import json
import os
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
    make_bert_teacher,
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
                **{"--model": tmp_path / "bert.json", "--max-steps": 10, "--lr": 3e-3},
            ),
            launcher="python",
        )
    )
    records = step_records(run)
    assert set(records[0]) >= {"loss", "mlm"} and "ce" not in records[0]
    assert records[-1]["loss"] < records[0]["loss"]
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
    out = tmp_path / "run"
    _fails(
        launch(base_args(tiny_teacher, tmp_path / "nope", out), launcher="python"),
        "nope",
        "build_shards",
    )
    other = make_bert_teacher(
        tmp_path / "bert_vocab_teacher", REPO / "tests" / "assets" / "bert-base-uncased"
    )
    _fails(
        launch(base_args(other, small_data_dir, out), launcher="python"),
        "bert_vocab_teacher",
        "differs",
        "--tokenizer",
    )
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    _fails(
        launch(
            base_args(tiny_teacher, small_data_dir, out, **{"--ds-config": ds}), launcher="python"
        ),
        "ds.json",
        "train_batch_size",
        "64",
    )
    ds.write_text(json.dumps({"optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}}))
    _fails(
        launch(
            base_args(tiny_teacher, small_data_dir, out, **{"--ds-config": ds}), launcher="python"
        ),
        "optimizer",
    )
    _fails(
        launch(
            base_args(
                tiny_teacher,
                small_data_dir,
                out,
                **{"--global-batch-size": 6, "--micro-batch-size": 4},
            ),
            launcher="python",
        ),
        "micro",
        "--micro-batch-size",
    )
    fp16 = REPO / "ds_configs" / "zero2_fp16.json"
    _fails(
        launch(
            base_args(tiny_teacher, small_data_dir, out, **{"--ds-config": fp16}), launcher="python"
        ),
        "fp16",
        "CPU",
        "zero2_bf16.json",
    )
    _fails(
        launch(
            base_args(tiny_teacher, small_data_dir, out, **{"--loss.alpha_ce": "lots"}),
            launcher="python",
        ),
        "loss.alpha_ce",
    )
    assert not (out / "checkpoints").exists()


def test_bad_input_fails_on_every_rank_without_hanging(tmp_path: Path, tiny_teacher: Path) -> None:
    result = launch(
        base_args(tiny_teacher, tmp_path / "missing", tmp_path / "run"), nproc=2, timeout=120
    )
    assert result.returncode != 0
    assert result.stderr.count("pipeline.train: error:") == 2


@pytest.mark.slow
def test_launchers_give_identical_losses(
    tmp_path: Path, tiny_teacher: Path, small_data_dir: Path
) -> None:
    """torchrun, the deepspeed launcher, mpirun and two torchrun "nodes" on loopback."""
    import subprocess

    from pipeline_helpers import _free_port, train_env

    runs = {}
    for name, kwargs in {
        "torchrun": {"launcher": "torchrun"},
        "deepspeed": {"launcher": "deepspeed"},
        "mpirun": {"launcher": "mpirun"},
    }.items():
        runs[name] = tmp_path / name
        check_ok(
            launch(
                base_args(tiny_teacher, small_data_dir, runs[name], **{"--max-steps": 4}),
                nproc=2,
                **kwargs,
            )
        )
    runs["two_nodes"] = tmp_path / "two_nodes"
    port = str(_free_port())
    args = base_args(tiny_teacher, small_data_dir, runs["two_nodes"], **{"--max-steps": 4})
    procs = [
        subprocess.Popen(
            [str(Path(os.sys.executable).parent / "torchrun"), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port, "-m", "pipeline.train", *args],
            cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    reference = losses(runs["torchrun"])
    assert len(reference) == 4
    for name, run in runs.items():
        assert losses(run) == reference, name


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
