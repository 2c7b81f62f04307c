"""The model families distil can distil, named by the ``model_type`` of a model's config.json.

data_prep never imports pipeline (tests/test_layering.py), so the list lives here:
:data:`pipeline.model.families.FAMILIES` (how each family is read, one module per family) names
the same types, and checks so when it is imported.

:func:`check_tokenizer_family` is how ``data_prep.build_shards`` refuses, before tokenizing
anything, a ``--tokenizer`` that is a model folder (or hub ID) of another family: shards made
with it could never train a student here, and the training would say so only hours later. A
tokenizer-only folder (no config.json, such as one from ``data_prep.train_tokenizer``) and a
SentencePiece ``.model`` say nothing about a model and are always fine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from data_prep.errors import UserError

SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "modernbert",
    "deberta-v2",
    "electra",
    "eurobert",
)
"""The ``model_type`` values of the teachers (and MLM-only models) pipeline.train accepts."""


def model_type_of(folder: str | os.PathLike[str]) -> str | None:
    """The ``model_type`` of ``folder/config.json``; None when there is no such file or it names
    none (a tokenizer-only folder, a SentencePiece ``.model``)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{config}: not a readable JSON model config ({type(exc).__name__}); fix or remove "
            "it (a tokenizer-only folder needs no config.json)"
        ) from None
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    return str(kind) if kind else None


def check_tokenizer_family(folder: str | os.PathLike[str], name: str | None = None) -> None:
    """Refuse, in one line, a tokenizer ``folder`` whose config.json names a model family distil
    cannot distil. ``name``: the folder or hub ID as the user gave it (``folder`` is where it
    resolved to)."""
    path = Path(folder)
    kind = model_type_of(path) if path.is_dir() else None
    if kind is None or kind in SUPPORTED_MODEL_TYPES:
        return
    given = name if name is not None else str(path)
    where = given if Path(given).expanduser() == path else f"{given} ({path})"
    raise UserError(
        f"--tokenizer {where}: its config.json says model_type '{kind}', a family distil cannot "
        f"distil (supported: {', '.join(SUPPORTED_MODEL_TYPES)}), so shards made with it could "
        "not train a student and nothing was tokenized; use a supported teacher's folder or hub "
        "ID, or a tokenizer-only folder (no config.json, e.g. from python -m "
        "data_prep.train_tokenizer), or pass --allow-any-model to tokenize for another tool"
    )
