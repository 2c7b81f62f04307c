"""Fine-tuning one GLUE task with one seed: settings, tokenization, the training loop, scoring.

The general form of :mod:`.classify`'s loop: single sentences or pairs through the tokenizer's
pair encoding, classification or regression (stsb: one output, ``problem_type="regression"``),
``token_type_ids`` only for models whose forward takes them (not DistilBERT). AdamW (no decay
on biases and norms), linear warmup then linear decay to 0, gradient clipping at 1, batches
padded to their longest sequence. :mod:`.glue` runs it over tasks and seeds.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import UserError
from pipeline.evaluation.glue_tasks import Split, TaskSpec, compute_metrics

EVAL_BATCH = 128


@dataclass(frozen=True)
class FinetuneSettings:
    """What fine-tuning a task depends on; equal settings (and data, model) give equal runs."""

    lr: float
    epochs: int
    batch_size: int = 32
    max_len: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_train_examples: int | None = None  # a fixed random subset (the same for every seed)
    max_eval_examples: int | None = None
    precision: str = "fp32"  # "bf16": autocast on CUDA (the weights stay fp32)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def task_settings(task: TaskSpec, **overrides: Any) -> FinetuneSettings:
    """The task's defaults (its lr and epochs, batch 32, max_len 128) with the overrides that are
    not None."""
    settings = FinetuneSettings(lr=task.lr, epochs=task.epochs)
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(settings.to_json())
    if unknown:
        raise TypeError(f"unknown fine-tuning settings: {sorted(unknown)}")
    settings = FinetuneSettings(**{**settings.to_json(), **given})
    for name in ("lr", "epochs", "batch_size", "max_len"):
        if not getattr(settings, name) > 0:
            raise UserError(
                f"GLUE {task.name}: {name} must be positive, not {getattr(settings, name)}"
            )
    for name in ("max_train_examples", "max_eval_examples"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise UserError(f"GLUE {task.name}: {name} must be at least 1, not {value}")
    if settings.precision not in ("fp32", "bf16"):
        raise UserError(f"GLUE: precision must be fp32 or bf16, not {settings.precision!r}")
    return settings


def subset(split: Split, limit: int | None) -> Split:
    """At most ``limit`` examples: a fixed random choice (seed 0), in the split's order."""
    if limit is None or limit >= len(split):
        return split
    keep = sorted(random.Random(0).sample(range(len(split)), limit))
    return Split(
        tuple([col[i] for i in keep] for col in split.texts), [split.labels[i] for i in keep]
    )


@dataclass
class Encoded:
    """A tokenized split: token ids (and token types) per example, and the labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[float]

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer: Any, split: Split, max_len: int, chunk: int = 8192) -> Encoded:
    """Tokenize a split (pairs with the tokenizer's pair encoding), truncated to ``max_len``."""
    ids: list[list[int]] = []
    types: list[list[int]] | None = []
    for start in range(0, len(split), chunk):
        cols = [col[start : start + chunk] for col in split.texts]
        enc = tokenizer(*cols, truncation=True, max_length=max_len)
        ids += enc["input_ids"]
        if types is not None and "token_type_ids" in enc:
            types += enc["token_type_ids"]
        else:
            types = None
    return Encoded(ids, types, list(split.labels))


def _batch(
    enc: Encoded, rows: list[int], pad_id: int, types: bool, regression: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    width = max(len(enc.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    tt = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        n = len(enc.input_ids[i])
        ids[r, :n] = torch.tensor(enc.input_ids[i])
        mask[r, :n] = 1
        if types and enc.token_type_ids is not None:
            tt[r, :n] = torch.tensor(enc.token_type_ids[i])
    out = {"input_ids": ids, "attention_mask": mask}
    if types:
        out["token_type_ids"] = tt
    out["labels"] = torch.tensor(
        [enc.labels[i] for i in rows], dtype=torch.float32 if regression else torch.long
    )
    return {k: v.to(device, non_blocking=True) for k, v in out.items()}


def finetune(
    model_dir: str | Path,
    task: TaskSpec,
    train: Encoded,
    evals: dict[str, Encoded],
    settings: FinetuneSettings,
    seed: int,
    pad_id: int,
    device: torch.device,
) -> dict[str, Any]:
    """Fine-tune a fresh classifier from ``model_dir`` on ``train`` with ``seed``; score it on
    each of ``evals`` (result key -> encoded split).

    Returns ``{"metrics": {key: {metric: value}}, "seconds", "steps", "train_loss"}`` where
    ``train_loss`` is the mean loss of the last epoch.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    began = time.perf_counter()
    torch.manual_seed(seed)  # the new head's initialisation and dropout
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # not the load report of the new head, each seed
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir),
            num_labels=task.num_labels,
            problem_type="regression" if task.regression else "single_label_classification",
            dtype=torch.float32,
        ).to(device)
    finally:
        logging.set_verbosity(verbosity)
    types = (  # not DistilBERT's (no such input), nor a single token type's (RoBERTa)
        "token_type_ids" in inspect.signature(model.forward).parameters
        and getattr(model.config, "type_vocab_size", 2) > 1
    )
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n.lower()]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "norm" in n.lower())]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
    )
    per_epoch = math.ceil(len(train) / settings.batch_size)
    total = settings.epochs * per_epoch
    warmup = int(settings.warmup_ratio * total)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    autocast = settings.precision == "bf16" and device.type == "cuda"
    rng = random.Random(seed)
    order = list(range(len(train)))
    model.train()
    losses: list[float] = []
    for _ in range(settings.epochs):
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            batch = _batch(train, rows, pad_id, types, task.regression, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    model.eval()
    metrics = {}
    for key, enc in evals.items():
        preds = predict(model, enc, pad_id, types, task.regression, device, autocast)
        metrics[key] = compute_metrics(task, preds, enc.labels)
    return {
        "metrics": metrics,
        "seconds": round(time.perf_counter() - began, 3),
        "steps": total,
        "train_loss": sum(losses) / max(1, len(losses)),
    }


@torch.no_grad()
def predict(
    model: Any,
    enc: Encoded,
    pad_id: int,
    types: bool,
    regression: bool,
    device: torch.device,
    autocast: bool = False,
) -> list[float]:
    """Class ids (or scores) of every example, batched by length (less padding), in order."""
    by_length = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    out: list[float] = [0.0] * len(enc)
    for start in range(0, len(by_length), EVAL_BATCH):
        rows = by_length[start : start + EVAL_BATCH]
        batch = _batch(enc, rows, pad_id, types, regression, device)
        batch.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(**batch).logits.float()
        values = logits[:, 0] if regression else logits.argmax(-1)
        for i, v in zip(rows, values.tolist()):
            out[i] = v
    return out
