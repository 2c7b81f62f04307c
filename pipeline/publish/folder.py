"""A run's checkpoint exported as a complete Hugging Face model folder.

:func:`export` writes what a user of ``transformers`` expects: ``config.json`` and
``model.safetensors`` (``AutoModelForMaskedLM``), a tokenizer fitted to the model
(``AutoTokenizer``), a model card (``README.md``, with the hub's metadata), ``distil_export.json``
(the run, checkpoint and step it came from) and ``distil_config.yaml`` (the run's full resolved
config: the one the checkpoint was saved under, or, for a checkpoint of an earlier release, the
run folder's). The folder is built beside its final name and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from data_prep.atomic import atomic_dir, check_output_dir
from data_prep.errors import UserError
from pipeline.publish.card_results import read_results
from pipeline.publish.model_card import model_card
from pipeline.publish.run_files import run_tokenizer, write_tokenizer
from pipeline.publish.run_model import load_run_model

COMMAND = "pipeline.export"
CONFIG_FILE = "config.yaml"  # the run's resolved config: in RUN_DIR, and in each checkpoint folder
EXPORTED_CONFIG = "distil_config.yaml"


def run_config(run_dir: Path, checkpoint: Path) -> Path:
    """The resolved config the checkpoint was saved under: its own ``config.yaml``, or the run
    folder's for a checkpoint of an earlier release (which kept none)."""
    own = checkpoint / CONFIG_FILE
    if own.is_file():
        return own
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {CONFIG_FILE}; not a run folder of pipeline.train")
    return path


def export(
    run_dir: Path,
    step: int | None,
    out: Path,
    overwrite: bool = False,
    hub_id: str | None = None,
    results: Path | None = None,
    teacher_results: Path | None = None,
) -> Path:
    """Export ``run_dir``'s checkpoint at ``step`` (the newest complete one: None) to ``out``:
    absent, empty, or (``overwrite``) an earlier export; anything else is refused untouched.
    ``hub_id``: the hub repository it is for (its card names it), else the card names the
    folder. ``results`` / ``teacher_results``: ``pipeline.evaluate --json`` files of this
    model and its teacher, for the card's model-index and results table."""
    check_output_dir(out, COMMAND, overwrite)
    scores = read_results(results) if results else None
    teacher_scores = read_results(teacher_results) if teacher_results else None
    if out.resolve() == run_dir.resolve() or run_dir.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--output {out}: the run folder {run_dir} is inside it; export elsewhere")
    model, ckpt = load_run_model(run_dir, step)
    config = run_config(run_dir, ckpt.path)
    try:
        cfg = yaml.safe_load(config.read_text())
    except yaml.YAMLError:
        raise UserError(f"{config}: not valid YAML; export another checkpoint (--step)") from None
    with atomic_dir(out, COMMAND, overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        write_tokenizer(run_tokenizer(run_dir), tmp, model)
        name = hub_id or out.resolve().name
        card = model_card(
            run_dir, cfg, model, ckpt.step, ckpt.commit, name, bool(hub_id), scores, teacher_scores
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        shutil.copyfile(config, tmp / EXPORTED_CONFIG)
        record = {"run": str(run_dir), "checkpoint": ckpt.tag, "step": ckpt.step}
        (tmp / "distil_export.json").write_text(json.dumps(record, indent=1))
    return out
