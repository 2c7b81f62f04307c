"""A downstream check: fine-tune a sequence classifier from a model and report its accuracy.

:func:`classify` reads labelled JSON lines (``text`` and ``label``), fine-tunes
``AutoModelForSequenceClassification`` from the model folder with GLUE's fine-tuning loop
(:mod:`.glue_finetune`: a single-sentence task of the file's labels) and measures test accuracy.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import UserError


def _read_labelled(path: Path) -> list[tuple[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append((str(obj["text"]), obj["label"]))
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{path}:{lineno}: expected a JSON object with 'text' and 'label'"
                ) from None
    if not rows:
        raise UserError(f"{path}: no labelled examples")
    return rows


def classify(
    model_dir: Path,
    train_path: Path,
    test_path: Path,
    epochs: int = 3,
    lr: float = 5e-5,
    batch_size: int = 16,
    max_len: int = 128,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Fine-tune a sequence classifier from ``model_dir`` and return its test accuracy (the
    GLUE fine-tuning loop of :mod:`.glue_finetune`, on a single-sentence task of these labels)."""
    from transformers import AutoTokenizer

    from pipeline.evaluation.glue_finetune import FinetuneSettings, encode, finetune
    from pipeline.evaluation.glue_tasks import Split, TaskSpec

    train, test = _read_labelled(train_path), _read_labelled(test_path)
    names = sorted({str(label) for _, label in train + test})
    index = {name: i for i, name in enumerate(names)}
    task = TaskSpec(
        name="classify",
        columns=("text",),
        num_labels=len(names),
        metrics=("accuracy",),
        evals={"test": "test"},
    )
    settings = FinetuneSettings(
        lr=lr, epochs=epochs, batch_size=batch_size, max_len=max_len, warmup_ratio=0.0
    )
    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def split(rows: list[tuple[str, Any]]) -> Split:
        return Split(([t for t, _ in rows],), [float(index[str(lab)]) for _, lab in rows])

    run = finetune(
        model_dir,
        task,
        encode(tok, split(train), max_len),
        {"test": encode(tok, split(test), max_len)},
        settings,
        seed,
        int(tok.pad_token_id or 0),
        device or torch.device("cpu"),
    )
    return {
        "accuracy": run["metrics"]["test"]["accuracy"],
        "train_examples": len(train),
        "test_examples": len(test),
    }
