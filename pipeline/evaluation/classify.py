"""A downstream check: fine-tune a sequence classifier from a model and report its accuracy.

:func:`classify` reads labelled JSON lines (``text`` and ``label``), fine-tunes
``AutoModelForSequenceClassification`` from the model folder and measures test accuracy.
"""

from __future__ import annotations

import gzip
import json
import math
import random
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
    """Fine-tune a sequence classifier from ``model_dir`` and return its test accuracy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = device or torch.device("cpu")
    train, test = _read_labelled(train_path), _read_labelled(test_path)
    names = sorted({str(label) for _, label in train + test})
    index = {name: i for i, name in enumerate(names)}
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=len(names)
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(total, 1)))
    order = list(range(len(train)))
    rng = random.Random(seed)

    def encode(rows: list[tuple[str, Any]]) -> dict[str, torch.Tensor]:
        enc = tok(
            [t for t, _ in rows],
            truncation=True,
            max_length=max_len,
            padding=True,
            return_tensors="pt",
        )
        if model.config.model_type == "distilbert":
            enc.pop("token_type_ids", None)
        out = {k: v.to(device) for k, v in enc.items()}
        out["labels"] = torch.tensor([index[str(lab)] for _, lab in rows], device=device)
        return out

    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = encode([train[i] for i in order[start : start + batch_size]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 64):
            batch = encode(test[start : start + 64])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return {
        "accuracy": correct / len(test),
        "train_examples": len(train),
        "test_examples": len(test),
    }
