"""pipeline.export: a run's checkpoint becomes a complete Hugging Face folder: exactly its weights,
a tokenizer whose outputs are the model's inputs, a model card with the hub's metadata and no path
of the machine, and the run's full config; a SentencePiece run's export carries a tokenizer
AutoTokenizer loads, with the SentencePiece model's ids. The push to the hub is planned from the
folder and, where the hub cannot be reached (no network here) or refuses the token, fails in one
line that says where the export still is. ``--out`` still works for one release, with a note."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from conftest import AUSTEN, Prep
from pipeline_helpers import REPO, base_args, check_ok, eval_records, launch, train_env

from data_prep.errors import UserError

HUB_ID = "me/tiny-distil"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(run / "checkpoints"), tag=f"global_step{step}"
    )


def _export_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.export", *args],
        cwd=REPO,
        env=env or train_env(),
        capture_output=True,
        text=True,
    )


def _hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A hub environment of its own: an empty HF_HOME, no token, online unless ``extra`` says."""
    env = {k: v for k, v in train_env().items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), **extra}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, reference_run: Path) -> Path:
    """``python -m pipeline.export --run REFERENCE_RUN --output HF_DIR`` (read-only)."""
    out = tmp_path_factory.mktemp("export") / "hf"
    result = _export_cli("--run", str(reference_run), "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note:" not in result.stderr, result.stderr[-3000:]  # no deprecation note
    return out


def test_export_loads_in_transformers_and_fills_a_mask(
    tmp_path: Path, reference_run: Path, exported: Path
) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    out = exported
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.model_type == "distilbert" and model.config.n_layers == 2
    weights = _weights(reference_run, 8)
    exported_weights = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(exported_weights[key.removeprefix("student.model.")], value), key
    fill = pipeline("fill-mask", model=model, tokenizer=tok)
    preds = fill(f"she was {tok.mask_token} to see him.")
    assert len(preds) == 5 and all(p["token_str"] for p in preds)
    # the tokenizer's outputs are the DistilBERT student's inputs (it takes no token_type_ids)
    enc = tok(["she was glad to see him.", "no"], padding=True, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    assert model(**enc).logits.shape[:2] == enc["input_ids"].shape
    assert tok.model_max_length == model.config.max_position_embeddings
    # the card: teacher, data fingerprint, recipe, steps and the run's last validation
    card = (out / "README.md").read_text()
    teacher = yaml.safe_load((reference_run / "config.yaml").read_text())["model"]["teacher"]
    last = eval_records(reference_run)[-1]
    assert last["step"] == 8
    for needle in (
        f"distilled from `{Path(teacher).name}`",
        "| steps | 8 of 8 (64 sequences seen) |",
        "5.0 x T²·KL(teacher ‖ student) at T=2.0",
        "layers [0, 3]",
        f"| MLM loss | {last['eval']['mlm_loss']:.4f} |",
        f"| top-1 agreement with the teacher | {last['eval']['agreement']:.2%} |",
        "pipeline_tag: fill-mask",
        'pipeline("fill-mask", model=name)',
        f'name = "{out.name}"',
    ):
        assert needle in card, needle
    # --step picks an older checkpoint; a missing one is one line, no traceback
    check = _export_cli("--run", str(reference_run), "--step", "3", "--output", str(tmp_path / "x"))
    assert (
        check.returncode == 2 and "Traceback" not in check.stderr and "global_step3" in check.stderr
    )


def test_the_card_has_hub_metadata_and_no_path_of_this_machine(
    tmp_path_factory: pytest.TempPathFactory, reference_run: Path, exported: Path
) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "fill-mask"
    assert {"distil", "distillation", "masked-lm"} <= set(data["tags"])
    # the tiny teacher is a local folder with no card, the data local files: no base_model,
    # licence or datasets, and the body says the licence is unknown
    assert not {"base_model", "license", "datasets"} & set(data)
    assert "No licence is recorded here" in card.text
    text = (exported / "README.md").read_text()
    cfg = yaml.safe_load((reference_run / "config.yaml").read_text())
    paths = [
        str(tmp_path_factory.getbasetemp()),
        str(REPO),
        str(reference_run),
        str(exported),
        cfg["model"]["teacher"],
        *cfg["data"]["data"],
        f"{os.sep}tmp{os.sep}",
    ]
    for path in paths:
        assert path not in text, path
    assert "`small`" in text and "`distil_config.yaml`" in text  # names, not paths


def test_the_export_carries_the_run_config(reference_run: Path, exported: Path) -> None:
    from pipeline.publish.folder import run_config

    copied = exported / "distil_config.yaml"
    cfg = yaml.safe_load(copied.read_text())
    assert cfg["train"]["max_steps"] == 8 and cfg["resolved"]["max_steps"] == 8
    ckpt = reference_run / "checkpoints" / "global_step8"
    source = (
        ckpt / "config.yaml" if (ckpt / "config.yaml").is_file() else reference_run / "config.yaml"
    )
    assert copied.read_bytes() == source.read_bytes()
    assert run_config(reference_run, ckpt) == source


def test_a_checkpoint_without_its_config_takes_the_run_folders(tmp_path: Path) -> None:
    from pipeline.publish.folder import run_config

    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "global_step2"
    ckpt.mkdir(parents=True)
    with pytest.raises(UserError, match=r"no config\.yaml"):
        run_config(run, ckpt)
    (run / "config.yaml").write_text("train: {max_steps: 2}\n")
    assert run_config(run, ckpt) == run / "config.yaml"  # a checkpoint of an earlier release
    (ckpt / "config.yaml").write_text("train: {max_steps: 3}\n")
    assert run_config(run, ckpt) == ckpt / "config.yaml"


def test_hub_metadata_names_a_hub_teacher_its_licence_and_hub_datasets(
    tmp_path: Path, reference_run: Path, exported: Path
) -> None:
    """A teacher named by hub ID (resolved from a hub snapshot) is the card's base_model, its
    card's licence the card's; data prepared from ``hf:`` datasets names them (local ``hf:``
    folders and files are not datasets)."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForMaskedLM

    from pipeline.checkpoint.store import read_checkpoint
    from pipeline.publish.model_card import model_card

    teacher = tmp_path / "hub_cache" / "snapshots" / "0123456789abcdef0123"
    teacher.mkdir(parents=True)
    (teacher / "README.md").write_text("---\nlicense: mit\n---\n# a teacher\n")
    data = tmp_path / "data"
    data.mkdir()
    inputs = ["hf:wikitext:wikitext-103-raw-v1", f"hf:{tmp_path}", "books/*.txt", "hf:wikitext"]
    (data / "manifest.json").write_text(json.dumps({"settings": {"inputs": inputs}}))
    cfg = yaml.safe_load((reference_run / "config.yaml").read_text())
    cfg["model"]["teacher"] = "google-bert/bert-base-uncased"
    cfg["resolved"]["teacher"] = {
        "name": "google-bert/bert-base-uncased",
        "path": str(teacher),
        "revision": teacher.name,
    }
    cfg["data"]["data"] = [f"0.5:{data}", f"0.5:{reference_run.parent}"]
    ckpt = read_checkpoint(reference_run / "checkpoints" / "global_step8")
    model = AutoModelForMaskedLM.from_pretrained(str(exported))
    text = model_card(reference_run, cfg, model, 8, ckpt.commit, HUB_ID, hub=True)
    card = ModelCard(text)
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data.license == "mit" and card.data.datasets == ["wikitext"]
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
    for needle in (
        "distilled from `google-bert/bert-base-uncased` (revision `0123456789ab`)",
        "Licence: `mit`, the teacher's",
        f"`0.5:data 0.5:{reference_run.parent.name}`",
        "prepared from `wikitext`",
        f'name = "{HUB_ID}"  # from the hub',
        "# tiny-distil",
    ):
        assert needle in text, needle
    assert str(tmp_path) not in text and str(teacher) not in text


def test_the_upload_plan_lists_the_export_folders_files(exported: Path) -> None:
    from pipeline.publish.hub import plan_upload

    plan = plan_upload(exported, HUB_ID, private=True)
    on_disk = sorted(p.name for p in exported.iterdir() if p.name != ".distil-output.json")
    assert list(plan.files) == on_disk and plan.folder == exported and plan.private
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(plan.files)
    assert {"distil_config.yaml", "distil_export.json"} <= set(plan.files)
    for name in plan.files:  # names inside the folder, never a path of this machine
        assert not Path(name).is_absolute() and ".." not in Path(name).parts, name
        assert (exported / name).is_file()
    assert plan.commit_message == "Upload a model exported by distil (run reference, step 8)"


def test_a_push_the_hub_cannot_take_is_one_line_and_keeps_the_folder(exported: Path) -> None:
    from huggingface_hub import HfApi

    from pipeline.publish.hub import plan_upload, push

    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    plan = plan_upload(exported, HUB_ID)
    with pytest.raises(UserError) as caught:
        push(plan, HfApi(endpoint=UNREACHABLE, token="hf_not_a_real_token"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--push-to-hub {HUB_ID}: cannot reach")
    assert f"still at {exported}" in message and f"hf upload {HUB_ID} {exported}" in message
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before


class _RefusesTokens(BaseHTTPRequestHandler):
    """Answers every request as the hub answers a bad token: 401 and a JSON error."""

    def _refuse(self) -> None:
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_hub() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _RefusesTokens)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_refused_token_says_to_log_in(exported: Path, refusing_hub: str) -> None:
    from huggingface_hub import HfApi

    from pipeline.publish.hub import plan_upload, push

    with pytest.raises(UserError) as caught:
        push(plan_upload(exported, HUB_ID), HfApi(endpoint=refusing_hub, token="hf_expired"))
    message = str(caught.value)
    assert "\n" not in message and f"--push-to-hub {HUB_ID}:" in message
    assert "(401)" in message and "`hf auth login`" in message and "HF_TOKEN" in message
    assert f"still at {exported}" in message


def test_old_out_flag_exports_with_a_note_and_a_failed_push_keeps_the_export(
    tmp_path: Path, reference_run: Path
) -> None:
    """``--out`` (renamed ``--output``) still exports, saying so in one line; the push then
    fails (the hub is unreachable) in one line, and the complete export stays, its card
    naming the repository."""
    out = tmp_path / "hf"
    env = _hub_env(tmp_path, HF_ENDPOINT=UNREACHABLE, HF_TOKEN="hf_not_a_real_token")
    result = _export_cli("--run", str(reference_run), "--out", str(out), "--push-to-hub", HUB_ID,
                         env=env)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        "pipeline.export: note: --out is deprecated and goes in the next release; use --output"
    )
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(
        f"pipeline.export: error: --push-to-hub {HUB_ID}: cannot reach the hub at {UNREACHABLE}"
    )
    assert f"still at {out}" in errors[0]
    assert f"exported {reference_run} to {out}" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "distil_config.yaml").is_file()
    card = (out / "README.md").read_text()
    assert f'name = "{HUB_ID}"  # from the hub' in card and "# tiny-distil" in card


def test_a_push_that_cannot_work_is_refused_before_exporting(
    tmp_path: Path, reference_run: Path
) -> None:
    """No token, or HF_HUB_OFFLINE (read by huggingface_hub when imported: a process of its own
    each), or a malformed repository ID: one line, and nothing is exported."""
    from data_prep.flags import options_without_help
    from pipeline.export import parser
    from pipeline.publish.hub import check_push

    assert options_without_help(parser()) == []
    with pytest.raises(UserError, match=r"^--push-to-hub me/no good: not a hub repository ID"):
        check_push("me/no good")
    out = tmp_path / "hf"
    cases = [
        (_hub_env(tmp_path), "not logged in to the hub; run `hf auth login`"),
        (_hub_env(tmp_path, HF_TOKEN="hf_x", HF_HUB_OFFLINE="1"), "HF_HUB_OFFLINE is set"),
    ]
    for env, needle in cases:
        result = _export_cli("--run", str(reference_run), "--output", str(out), "--push-to-hub",
                             HUB_ID, env=env)  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.startswith(f"pipeline.export: error: --push-to-hub {HUB_ID}: ")
        assert needle in result.stderr and len(result.stderr.splitlines()) == 1
        assert not out.exists()


def test_a_sentencepiece_run_exports_a_tokenizer_with_its_ids(
    tmp_path: Path, small_corpus: list[Path]
) -> None:
    """MLM-only training of a DistilBERT on SentencePiece shards, exported: AutoTokenizer loads
    the export's tokenizer, which encodes like the .model, frames with [CLS]/[SEP] and feeds the
    model; the .model stays beside it, so the export passes the check against the data."""
    import sentencepiece as spm
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DistilBertConfig

    from data_prep import train_tokenizer
    from data_prep.manifest import load_manifest
    from data_prep.tokenizer import check_model_tokenizer
    from pipeline.publish.folder import export

    texts = [str(p) for p in small_corpus[:2]]
    train_tokenizer.main(
        ["--input", *texts, "--output", str(tmp_path / "spm"), "--kind", "sentencepiece",
         "--vocab-size", "1000"]
    )  # fmt: skip
    model_file = tmp_path / "spm" / "spm.model"
    data = tmp_path / "data"
    Prep.build(
        "--input", *texts, "--tokenizer", model_file, "--seq-len", "64", "--output", data,
        "--workers", "1", "--valid-fraction", "0.05",
    )  # fmt: skip
    DistilBertConfig(
        vocab_size=1000, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    ).to_json_file(str(tmp_path / "distilbert.json"))
    run = tmp_path / "run"
    args = base_args(None, data, run, **{"--model": tmp_path / "distilbert.json", "--max-steps": 2})
    check_ok(launch(args, launcher="python"))
    out = export(run, None, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    cls, sep = sp.PieceToId("[CLS]"), sp.PieceToId("[SEP]")
    emma = gzip.decompress((AUSTEN / "emma.txt.gz").read_bytes()).decode()  # not trained on
    samples = [t for t in emma.split("\n\n")[:300] if t.strip()] + ["It was [MASK] of her."]
    for text in samples:
        assert tok(text)["input_ids"] == [cls, *sp.EncodeAsIds(text), sep], text
    assert tok.mask_token_id == sp.PieceToId("[MASK]") and tok.pad_token_id == sp.pad_id()
    enc = tok(samples[:4], padding=True, truncation=True, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"} and enc["input_ids"].shape[1] <= 64
    assert model(**enc).logits.shape[:2] == enc["input_ids"].shape
    assert (out / "spm.model").read_bytes() == model_file.read_bytes()
    assert check_model_tokenizer(out, load_manifest(data).tokenizer, data)
    card = (out / "README.md").read_text()
    assert "pretrained with masked-LM only" in card and "| steps | 2 of 2" in card
    assert json.loads((out / "distil_export.json").read_text())["step"] == 2
    assert yaml.safe_load((out / "distil_config.yaml").read_text())["train"]["max_steps"] == 2


def _glue_file(path: Path, rte: list[float], folder: Path) -> Path:
    """A results file as pipeline.evaluate --json writes it (the GLUE layout), by hand."""
    med = sorted(rte)[len(rte) // 2]
    per_seed = {str(i): v for i, v in enumerate(rte)}
    stat = {"median": med, "min": min(rte), "max": max(rte), "per_seed": per_seed}
    data = {
        "format": "distil-glue-1",
        "tasks": {
            "rte": {
                "seeds": list(range(len(rte))),
                "data": {"source": "hub:nyu-mll/glue"},
                "results": {"rte": {"accuracy": stat}},
            },
            "stsb": {
                "seeds": list(range(len(rte))),
                "data": {"source": f"folder:{folder}"},
                "results": {"stsb": {"pearson": stat, "spearmanr": stat}},
            },
        },
        "mlm": {"mlm_accuracy": 0.3468},
    }
    path.write_text(json.dumps(data))
    return path


def test_evaluation_results_go_into_the_cards_model_index_beside_the_teachers(
    tmp_path: Path, reference_run: Path
) -> None:
    from huggingface_hub import ModelCard

    local = tmp_path / "my_sts_folder"
    ours = _glue_file(tmp_path / "student.json", [0.61, 0.65, 0.63], local)
    theirs = _glue_file(tmp_path / "teacher.json", [0.70, 0.72, 0.71], local)
    out = tmp_path / "hf"
    result = _export_cli(
        "--run", str(reference_run), "--output", str(out), "--results", str(ours),
        "--teacher-results", str(theirs),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    card = ModelCard.load(out / "README.md")
    found = {
        (r.dataset_name, r.metric_type): (
            r.task_type,
            r.dataset_type,
            r.dataset_split,
            r.metric_value,
        )
        for r in card.data.eval_results
    }
    assert found[("GLUE RTE", "accuracy")] == (
        "text-classification",
        "nyu-mll/glue",
        "validation",
        0.63,
    )
    assert found[("stsb (local files: my_sts_folder)", "spearmanr")][1] == "my_sts_folder"
    assert found[("the training data's held-out split", "accuracy")][3] == 0.3468
    text = (out / "README.md").read_text()
    assert "| rte | accuracy | 63.0 (61.0-65.0) | 71.0 (70.0-72.0) |" in text
    assert "teacher: 34.68%" in text
    assert str(tmp_path) not in text  # the local folder by its name only
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused = _export_cli(
        "--run", str(reference_run), "--output", str(tmp_path / "x"), "--results", str(bad)
    )
    assert refused.returncode == 2 and "bad.json: holds no GLUE tasks" in refused.stderr
    assert not (tmp_path / "x").exists()
