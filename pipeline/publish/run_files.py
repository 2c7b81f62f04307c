"""The model files of a run: the student's config and a tokenizer fitted to it.

``RUN_DIR/model/`` is written when a run starts (:func:`save_run_model_files`): the student's
``config.json`` and the tokenizer the data was made with, saved as a Hugging Face tokenizer whose
outputs are exactly the model's inputs (:func:`write_tokenizer`; a SentencePiece ``.model`` is
converted and kept beside it). Export and evaluation read them back (:func:`run_tokenizer`).
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any

from data_prep.errors import UserError
from data_prep.manifest import DataManifest
from data_prep.tokenizer import TextTokenizer, bert_tokenizer_from_vocab, has_tokenizer_files

MODEL_DIR = "model"


def save_run_model_files(
    run_dir: Path, student: Any, manifest: DataManifest, teacher: Path | None
) -> None:
    """RUN_DIR/model: the student's config.json and the tokenizer, for export and evaluation."""
    out = run_dir / MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    student.config.save_pretrained(str(out))
    write_tokenizer(tokenizer_source(manifest, teacher), out, student.model)


def tokenizer_source(manifest: DataManifest, teacher: Path | None) -> Path:
    """Where the run's tokenizer is: the data's SentencePiece model (or the teacher's copy of it),
    else the teacher's tokenizer folder, else the folder the data was tokenized with."""
    data_tok = Path(manifest.tokenizer.path)
    candidates = []
    if manifest.tokenizer.kind == "sentencepiece":
        candidates += [data_tok, *([Path(teacher) / data_tok.name] if teacher else [])]
    if teacher and has_tokenizer_files(teacher):
        candidates.append(Path(teacher))
    candidates.append(data_tok)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise UserError(
        f"no tokenizer to save with the run: {data_tok} (the data's tokenizer) is gone and the "
        "teacher carries none; put the tokenizer back where the data was built with it"
    )


def model_input_names(model: Any, names: list[str]) -> list[str]:
    """The tokenizer outputs that ``model.forward`` takes: no ``token_type_ids`` for a DistilBERT
    student (transformers 4.x rejects them), whatever the teacher's tokenizer returned."""
    accepted = inspect.signature(model.forward).parameters
    return [n for n in names if n in accepted]


def write_tokenizer(source: Path, out: Path, model: Any) -> None:
    """The tokenizer of ``source`` (an HF folder or a SentencePiece ``.model``) saved into ``out``
    as a Hugging Face tokenizer fitted to ``model``: its inputs and its maximum length.

    A SentencePiece model is converted (:mod:`data_prep.spm_hf`) and also copied beside it, so
    checks against data made with it compare the very file.
    """
    from transformers import AutoTokenizer

    fitted: dict[str, Any] = {}
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        fitted["model_max_length"] = int(positions)
    if source.is_file():
        from data_prep.spm_hf import sentencepiece_to_hf

        text_tok = TextTokenizer(source)
        ids = text_tok.special_ids
        special = {
            f"{name}_token": text_tok.piece(getattr(ids, name))
            for name in ("cls", "sep", "pad", "mask", "unk")
        }
        names = model_input_names(model, ["input_ids", "token_type_ids", "attention_mask"])
        tok = sentencepiece_to_hf(source, special, names)
        tok.model_max_length = fitted.get("model_max_length", tok.model_max_length)
        tok.init_kwargs.update(fitted)
        tok.save_pretrained(str(out))
        if source.resolve() != (out / source.name).resolve():
            shutil.copy2(source, out / source.name)
        return
    try:
        names = model_input_names(
            model, list(AutoTokenizer.from_pretrained(str(source)).model_input_names)
        )
        tok = AutoTokenizer.from_pretrained(str(source), model_input_names=names, **fitted)
    except Exception:  # a bare vocab.txt (see bert_tokenizer_from_vocab)
        names = model_input_names(model, ["input_ids", "token_type_ids", "attention_mask"])
        tok = bert_tokenizer_from_vocab(source / "vocab.txt", model_input_names=names, **fitted)
    tok.save_pretrained(str(out))


def run_tokenizer(run_dir: Path) -> Path:
    """The tokenizer saved with a run: its SentencePiece model if it has one, else the folder."""
    folder = run_dir / MODEL_DIR
    spm_models = sorted(folder.glob("*.model"))
    if spm_models:
        return spm_models[0]
    if not has_tokenizer_files(folder):
        raise UserError(f"{folder}: no tokenizer saved with the run; nothing to export it with")
    return folder
