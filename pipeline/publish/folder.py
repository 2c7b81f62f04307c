"""A run's checkpoint exported as a complete Hugging Face model folder.

:func:`export` writes what a user of ``transformers`` expects: ``config.json`` and
``model.safetensors`` (``AutoModelForMaskedLM``), a tokenizer fitted to the model
(``AutoTokenizer``), a model card (``README.md``) and ``distil_export.json`` (the run, checkpoint
and step it came from). The folder is built beside its final name and renamed into place when
complete.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.atomic import atomic_dir, check_output_dir
from data_prep.errors import UserError
from pipeline.publish.model_card import model_card
from pipeline.publish.run_files import run_tokenizer, write_tokenizer
from pipeline.publish.run_model import load_run_model

COMMAND = "pipeline.export"


def export(run_dir: Path, step: int | None, out: Path, overwrite: bool = False) -> Path:
    """Export ``run_dir``'s checkpoint at ``step`` (the newest complete one: None) to ``out``:
    absent, empty, or (``overwrite``) an earlier export; anything else is refused untouched."""
    check_output_dir(out, COMMAND, overwrite)
    if out.resolve() == run_dir.resolve() or run_dir.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--out {out}: the run folder {run_dir} is inside it; export elsewhere")
    model, ckpt = load_run_model(run_dir, step)
    with atomic_dir(out, COMMAND, overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        write_tokenizer(run_tokenizer(run_dir), tmp, model)
        card = model_card(run_dir, model, ckpt.step, ckpt.commit, str(out))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        record = {"run": str(run_dir), "checkpoint": ckpt.tag, "step": ckpt.step}
        (tmp / "distil_export.json").write_text(json.dumps(record, indent=1))
    return out
