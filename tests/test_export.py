"""pipeline.export: a run's checkpoint becomes a complete Hugging Face folder: exactly its weights,
a tokenizer whose outputs are the model's inputs, and a model card; a SentencePiece run's export
carries a tokenizer AutoTokenizer loads, with the SentencePiece model's ids."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from conftest import AUSTEN, Prep
from pipeline_helpers import REPO, base_args, check_ok, eval_records, launch, train_env


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(run / "checkpoints"), tag=f"global_step{step}"
    )


def test_export_loads_in_transformers_and_fills_a_mask(tmp_path: Path, reference_run: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    out = tmp_path / "hf"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.export", "--run", str(reference_run), "--out", str(out)],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.model_type == "distilbert" and model.config.n_layers == 2
    weights = _weights(reference_run, 8)
    exported = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(exported[key.removeprefix("student.model.")], value), key
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
        f"distilled from `{teacher}`",
        "| steps | 8 of 8 (64 sequences seen) |",
        "5.0 x T²·KL(teacher ‖ student) at T=2.0",
        "layers [0, 3]",
        f"| MLM loss | {last['eval']['mlm_loss']:.4f} |",
        f"| top-1 agreement with the teacher | {last['eval']['agreement']:.2%} |",
        "pipeline_tag: fill-mask",
    ):
        assert needle in card, needle
    # --step picks an older checkpoint; a missing one is one line, no traceback
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.export",
            "--run",
            str(reference_run),
            "--step",
            "3",
            "--out",
            str(tmp_path / "x"),
        ],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
    )
    assert (
        check.returncode == 2 and "Traceback" not in check.stderr and "global_step3" in check.stderr
    )


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
