"""pipeline.export: a run's checkpoint becomes a Hugging Face folder with exactly its weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from pipeline_helpers import REPO, train_env


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
