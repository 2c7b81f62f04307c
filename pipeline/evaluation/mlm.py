"""Held-out masked-LM measures of a model, optionally against its teacher.

MLM accuracy and loss at the masked positions of the valid split (the masking contract of
training, view 0), and with a teacher: its accuracy, top-1 agreement and KL(teacher || model) at
T=1 on the same positions. :func:`batch_sums` sums one batch (the trainer's periodic validation
calls it on every rank and reduces the sums); :func:`summarize` turns the sums into the metrics;
:func:`mlm_metrics` runs the whole valid split of DATA_DIR on one process.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from data_prep.errors import UserError
from pipeline.data.batch import take_rows
from pipeline.data.masking import EVAL_MASKING, IGNORE_INDEX, make_masker
from pipeline.model.masked_lm import MaskedLM

SUMS = ("masked_tokens", "loss_sum", "correct", "teacher_correct", "agreement", "kl_sum")


@torch.no_grad()
def batch_sums(
    model: MaskedLM, teacher: MaskedLM | None, batch: dict[str, torch.Tensor], device: torch.device
) -> torch.Tensor:
    """The :data:`SUMS` of one masked batch (float64, CPU)."""
    labels = batch["labels"].reshape(-1)
    rows = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
    out = torch.zeros(len(SUMS), dtype=torch.float64)
    if rows.numel() == 0:
        return out
    attn_cpu = batch["attention_mask"]
    attn = None if bool(attn_cpu.all()) else attn_cpu.to(device)
    ids = batch["input_ids"].to(device)
    rows_d, target = rows.to(device), labels[rows].to(device)
    last, _ = model.encode(ids, attn)
    logits = model.head(take_rows(last, rows_d)).float()
    pred = logits.argmax(-1)
    out[0] = rows.numel()
    out[1] = F.cross_entropy(logits, target, reduction="sum").item()
    out[2] = (pred == target).sum().item()
    if teacher is not None:
        t_last, _ = teacher.encode(ids, attn)
        t_logits = teacher.head(take_rows(t_last, rows_d)).float()
        t_pred = t_logits.argmax(-1)
        out[3] = (t_pred == target).sum().item()
        out[4] = (t_pred == pred).sum().item()
        log_p, log_q = F.log_softmax(t_logits, -1), F.log_softmax(logits, -1)
        out[5] = F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
    return out


def summarize(sums: torch.Tensor, with_teacher: bool) -> dict[str, float]:
    n = max(float(sums[0]), 1.0)
    metrics = {
        "mlm_loss": float(sums[1]) / n,
        "mlm_accuracy": float(sums[2]) / n,
        "masked_tokens": float(sums[0]),
    }
    if with_teacher:
        metrics.update(
            teacher_mlm_accuracy=float(sums[3]) / n,
            agreement=float(sums[4]) / n,
            kl=float(sums[5]) / n,
        )
    return metrics


def mlm_metrics(
    model: Any,
    teacher: Any,
    data: list[str],
    samples: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    from pipeline.config.sources import parse_sources
    from pipeline.data.corpus import Corpus
    from pipeline.data.loader import EvalBatches, loader
    from pipeline.data.shards import ShardedDataset

    corpus = Corpus(parse_sources(data, need_weights=False))
    manifest = corpus.manifest
    if not manifest.valid.num_sequences:
        raise UserError(
            f"{corpus.describe()}: the valid split is empty; rebuild with --valid-fraction > 0"
        )
    dataset = ShardedDataset(corpus.sources[0].path, "valid", manifest)
    masker = make_masker(manifest, EVAL_MASKING)
    pad = manifest.special_ids.pad
    batches = EvalBatches(dataset, masker, seed, batch_size, 0, 1, samples, pad)
    student = MaskedLM(model.to(device).eval())
    t = MaskedLM(teacher.to(device).eval()) if teacher is not None else None
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    for batch in loader(batches, 0, False):
        sums += batch_sums(student, t, batch, device)
    return summarize(sums, t is not None)
