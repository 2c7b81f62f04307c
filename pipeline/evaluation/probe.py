"""A quick downstream probe at each validation: a linear classifier on the student's features.

``train.probe FOLDER`` names a small labelled classification set in GLUE's format: a train and a
validation file (``train.jsonl`` / ``validation.jsonl``, or ``.csv``, ``.tsv``, ``.parquet``,
chosen by suffix; one of each) with columns ``sentence`` and ``label`` (single sentences) or
``sentence1``, ``sentence2`` and ``label`` (pairs, encoded as ``[CLS] a [SEP] b [SEP]`` by the
run's tokenizer). Labels are class ids or names, compared as text; the classes are those of the
train split (a validation label the train split lacks is never predicted, so always wrong).

At every validation of the trainer (``train.eval_every``, the end, ``train.eval_on_start``):

* features: the student's last hidden states mean-pooled over the attention mask, in eval mode
  without gradients, over at most ``train.probe_examples`` examples of each split (a fixed
  subset, seed 0, when a file holds more; :func:`read_probe_set`);
* the probe: a multinomial logistic regression on the standardised train features (mean and
  standard deviation of the train split), L2 penalty ``0.5 |W|^2 / n`` (scikit-learn's C = 1),
  fitted in float64 on the CPU by L-BFGS from zeros (:func:`fit_logistic`): deterministic, and it
  draws no random number;
* the metrics (:meth:`Probe.run`): ``probe_accuracy`` (validation split),
  ``probe_train_accuracy`` and ``probe_seconds`` (the probe's wall time, features included).

In the trainer (:mod:`pipeline.run.trainer`), :class:`Probe` is built once, when the run starts,
on rank 0 only: the examples are read and checked there (the other ranks check that the files
exist, :func:`read_probe_examples`) before anything is written in the run folder, a bad input
stopping every rank with one line; then they are tokenised once with ``RUN_DIR/model/`` (the
tokenizer saved with the run, so exactly the model's inputs) and kept as padded tensors of one
shape on the device. At a validation rank 0 runs the probe on the student inside the engine
(whole on every rank under ZeRO-2) while the other ranks wait in the collective that brings them
its metrics, so the validation dict is the same on every rank: at most ``2 x probe_examples``
encoder forwards and the fit (milliseconds for the test's tiny model, about a second for a
768-wide model's 512 + 512 examples on a CPU). A diverged model's non-finite features give NaN
metrics. The probe leaves training as it was: the model goes back to the mode it was in, and
neither the forward (eval mode: no dropout) nor the fit touches the global random state.
"""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_prep.errors import UserError
from pipeline.model.masked_lm import MaskedLM

SPLITS = ("train", "validation")
SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")
BATCH = 64
"""Sequences per encoder forward of the probe."""


@dataclass(frozen=True)
class ProbeSplit:
    """The examples of one split: the first (and second) texts and the labels, as text."""

    first: list[str]
    second: list[str] | None
    labels: list[str]


def probe_files(folder: Path) -> dict[str, Path]:
    """The train and validation files of a probe folder; a missing one is a one-line UserError."""
    if not folder.is_dir():
        raise UserError(
            f"train.probe {folder}: no such folder (a labelled set in GLUE's format: "
            "train.jsonl and validation.jsonl, or .csv/.tsv/.parquet)"
        )
    files = {}
    for split in SPLITS:
        found = [folder / f"{split}{s}" for s in SUFFIXES if (folder / f"{split}{s}").is_file()]
        if not found:
            raise UserError(
                f"train.probe: {folder / split}.jsonl is missing (or .csv, .tsv, .parquet): the "
                f"probe needs a {split} file with columns sentence and label (or sentence1, "
                "sentence2 and label)"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise UserError(f"train.probe {folder}: several {split} files ({names}); keep one")
        files[split] = found[0]
    return files


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            if any(not isinstance(r, dict) for r in rows):
                raise ValueError("expected one JSON object per line")
        else:  # GLUE's tsv files hold stray quotes: no quoting there
            with open(path, encoding="utf-8", newline="") as fh:
                tsv = path.suffix == ".tsv"
                reader = (
                    csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
                    if tsv
                    else csv.DictReader(fh)
                )
                rows = list(reader)
    except (OSError, ValueError, csv.Error) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"train.probe: {path}: cannot read it ({first})") from None
    if not rows:
        raise UserError(f"train.probe: {path}: no examples")
    return rows


def read_split(path: Path, limit: int) -> ProbeSplit:
    """At most ``limit`` examples of one file: all, or a fixed subset (seed 0) in file order."""
    rows = _read_rows(path)
    pair = "sentence1" in rows[0]
    columns = ("sentence1", "sentence2", "label") if pair else ("sentence", "label")
    if len(rows) > limit:
        keep = sorted(random.Random(0).sample(range(len(rows)), limit))
        rows = [rows[i] for i in keep]
    for i, row in enumerate(rows, 1):
        missing = [c for c in columns if c not in row]
        if missing or row["label"] is None or str(row["label"]).strip() == "":
            raise UserError(
                f"train.probe: {path}: example {i} has no {', '.join(missing) or 'label'}; the "
                "probe needs columns sentence and label (or sentence1, sentence2 and label)"
            )

    def text(row: dict[str, Any], column: str) -> str:
        return "" if row[column] is None else str(row[column])

    return ProbeSplit(
        first=[text(r, columns[0]) for r in rows],
        second=[text(r, "sentence2") for r in rows] if pair else None,
        labels=[str(r["label"]).strip() for r in rows],
    )


def read_probe_set(folder: Path, limit: int) -> tuple[ProbeSplit, ProbeSplit]:
    """The train and validation examples of a probe folder, checked (one-line UserErrors)."""
    if limit < 2:
        raise UserError("train.probe_examples must be at least 2")
    files = probe_files(folder)
    train, valid = (read_split(files[split], limit) for split in SPLITS)
    if len(set(train.labels)) < 2:
        raise UserError(f"train.probe: {files['train']}: needs at least two different labels")
    if (train.second is None) != (valid.second is None):
        raise UserError(
            f"train.probe {folder}: the train and validation files must both be single "
            "sentences (sentence) or both pairs (sentence1, sentence2)"
        )
    return train, valid


def read_probe_examples(
    folder: Path, limit: int, main: bool
) -> tuple[ProbeSplit, ProbeSplit] | None:
    """The examples on the main rank (read and checked); elsewhere None once the files exist."""
    if main:
        return read_probe_set(folder, limit)
    probe_files(folder)
    return None


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, classes: int, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[d, classes]`` and bias of a multinomial logistic regression of ``y`` on ``x``
    (float64 on the CPU, from zeros): mean cross-entropy + ``0.5 |W|^2 / n``, by L-BFGS."""
    x = x.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu", torch.int64)
    l2 = 1.0 / x.shape[0]
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor, valid_y: torch.Tensor
) -> tuple[float, float]:
    """(validation accuracy, train accuracy) of a logistic regression fitted on the train
    features, standardised by their mean and standard deviation. Labels are class ids
    ``0..C-1`` (C: the train split's); a validation id ``>= C`` is never predicted."""
    train_x, valid_x = train_x.double().cpu(), valid_x.double().cpu()
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)
    train_x, valid_x = (train_x - mean) / std, (valid_x - mean) / std
    classes = int(train_y.max()) + 1
    w, b = fit_logistic(train_x, train_y, classes)

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((x @ w + b).argmax(-1) == y.cpu()).double().mean())

    return accuracy(valid_x, valid_y), accuracy(train_x, train_y)


@dataclass
class _Encoded:
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # (input_ids, attention_mask) on the device
    labels: torch.Tensor  # class ids, CPU


class Probe:
    """The probe set tokenised once, on the device; :meth:`run` measures a model on it."""

    def __init__(
        self,
        train: ProbeSplit,
        valid: ProbeSplit,
        tokenizer_dir: Path,
        max_len: int,
        pad_id: int,
        device: torch.device,
    ) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        names = sorted(set(train.labels))
        self.classes = {name: i for i, name in enumerate(names)}
        self.pad_id, self.device = pad_id, device
        ids = {
            split: tok(
                s.first,
                s.second,
                truncation=True,
                max_length=max_len,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            for split, s in (("train", train), ("validation", valid))
        }
        # One length for every batch (the longest example): a compiled encoder sees one shape.
        self.length = max(len(seq) for seqs in ids.values() for seq in seqs)
        self.train = self._encode(ids["train"], train.labels)
        self.valid = self._encode(ids["validation"], valid.labels)

    def _encode(self, ids: list[list[int]], labels: list[str]) -> _Encoded:
        unseen = len(self.classes)  # a label the train split lacks: never predicted
        batches = []
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            input_ids = torch.full((len(chunk), self.length), self.pad_id, dtype=torch.int64)
            mask = torch.zeros((len(chunk), self.length), dtype=torch.int64)
            for row, seq in enumerate(chunk):
                input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
                mask[row, : len(seq)] = 1
            batches.append((input_ids.to(self.device), mask.to(self.device)))
        y = torch.tensor([self.classes.get(label, unseen) for label in labels], dtype=torch.int64)
        return _Encoded(batches, y)

    def describe(self) -> str:
        return (
            f"{len(self.train.labels)} train / {len(self.valid.labels)} validation examples, "
            f"{len(self.classes)} classes, {self.length} tokens at most"
        )

    @torch.no_grad()
    def features(self, model: MaskedLM, data: _Encoded) -> torch.Tensor:
        """Last hidden states mean-pooled over the attention mask, float32 on the CPU."""
        out = []
        for input_ids, mask in data.batches:
            last, _ = model.encode(input_ids, mask)
            m = mask.unsqueeze(-1).float()  # pooled in fp32 whatever the model's dtype
            pooled = (last.float() * m).sum(1) / m.sum(1).clamp_min(1.0)
            out.append(pooled.cpu())
        return torch.cat(out)

    def run(self, model: MaskedLM) -> dict[str, float]:
        """``probe_accuracy``, ``probe_train_accuracy``, ``probe_seconds`` of ``model``, which is
        put in eval mode and back in the mode it was in."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            train_x = self.features(model, self.train)
            valid_x = self.features(model, self.valid)
        finally:
            model.train(was_training)
        if bool(torch.isfinite(train_x).all()) and bool(torch.isfinite(valid_x).all()):
            valid_acc, train_acc = probe_accuracy(
                train_x, self.train.labels, valid_x, self.valid.labels
            )
        else:  # a diverged model: nothing to fit (the loss guards say why)
            valid_acc = train_acc = float("nan")
        return {
            "probe_accuracy": valid_acc,
            "probe_train_accuracy": train_acc,
            "probe_seconds": round(time.perf_counter() - start, 3),
        }
