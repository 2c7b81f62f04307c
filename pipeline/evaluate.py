"""Held-out evaluation of a masked LM, optionally against its teacher, and a downstream check.

    python -m pipeline.evaluate --model HF_DIR_OR_RUN_DIR --data DATA_DIR [--teacher TEACHER]
        [--json OUT] [--samples N] [--classify TRAIN.jsonl TEST.jsonl]

MLM accuracy and loss on the valid split use the masking contract of training (view 0, the run's
seed), so the numbers are comparable with the trainer's periodic validation. Models and teachers
are folders or hub IDs (:mod:`data_prep.hub`). With a teacher:
the teacher's accuracy, top-1 agreement and KL(teacher || model) at T=1 on the same positions.
``--classify`` fine-tunes a sequence classifier from the model on a labelled jsonl (fields
``text`` and ``label``) and reports its test accuracy, as DistilBERT reports GLUE.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_prep.atomic import write_json
from data_prep.errors import UserError, cli_main
from data_prep.hub import resolve
from pipeline.batch import take_rows
from pipeline.config import DEFAULT_SEED
from pipeline.masking import EVAL_MASKING, IGNORE_INDEX, make_masker
from pipeline.models import MaskedLM, count_parameters

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


def load_model(spec: str) -> tuple[Any, Path | None, Path | None]:
    """A Hugging Face masked LM from a run folder, an HF folder or a hub ID; and its run folder or
    its HF folder (whichever it came from)."""
    from transformers import AutoModelForMaskedLM

    path = Path(spec)
    if (path / "checkpoints").is_dir() and (path / "model").is_dir():
        from pipeline.export import load_run_model

        model, _ = load_run_model(path)
        return model, path, None
    path = resolve(spec, "--model")
    if not (path / "config.json").is_file():
        raise UserError(
            f"--model {spec}: neither a Hugging Face model folder (or hub ID) nor a run folder"
        )
    return AutoModelForMaskedLM.from_pretrained(str(path)), None, path


def _run_seed(run_dir: Path | None, default: int) -> int:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return default
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return int(cfg.get("train", {}).get("seed", default))


def mlm_metrics(
    model: Any,
    teacher: Any,
    data: list[str],
    samples: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    from pipeline.corpus import Corpus, parse_sources
    from pipeline.data import EvalBatches, ShardedDataset, loader

    corpus = Corpus(parse_sources(data, need_weights=False))
    manifest = corpus.manifest
    if not manifest["splits"]["valid"]["num_sequences"]:
        raise UserError(
            f"{corpus.describe()}: the valid split is empty; rebuild with --valid-fraction > 0"
        )
    dataset = ShardedDataset(corpus.sources[0].path, "valid", manifest)
    masker = make_masker(manifest, EVAL_MASKING)
    pad = int(manifest["special_ids"]["pad"])
    batches = EvalBatches(dataset, masker, seed, batch_size, 0, 1, samples, pad)
    student = MaskedLM(model.to(device).eval())
    t = MaskedLM(teacher.to(device).eval()) if teacher is not None else None
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    for batch in loader(batches, 0, False):
        sums += batch_sums(student, t, batch, device)
    return summarize(sums, t is not None)


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


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="HF folder, hub ID or RUN_DIR of pipeline.train")
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="DATA_DIR (its valid split is used); several (W:DIR) for a blend's",
    )
    p.add_argument("--teacher", help="teacher HF folder or hub ID: adds agreement and KL")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--samples", type=int, default=4096, help="valid sequences to score")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--seed", type=int, help=f"masking seed (default: the run's, else {DEFAULT_SEED})"
    )
    p.add_argument("--classify", nargs=2, metavar=("TRAIN", "TEST"), help="labelled jsonl files")
    p.add_argument("--classify-epochs", type=int, default=3)
    p.add_argument("--classify-lr", type=float, default=5e-5)
    p.add_argument("--classify-batch-size", type=int, default=16)
    args = p.parse_args(argv)
    from pipeline.launch import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, run_dir, model_dir = load_model(args.model)
    teacher = None
    if args.teacher:
        from pipeline.models import load_teacher

        teacher_dir = resolve(args.teacher, "--teacher")
        teacher = load_teacher(str(teacher_dir), "sdpa", need_head=True).model
    seed = args.seed if args.seed is not None else _run_seed(run_dir, DEFAULT_SEED)
    result: dict[str, Any] = {"model": args.model, "params": count_parameters(model)}
    result["mlm"] = mlm_metrics(
        model, teacher, args.data, args.samples, args.batch_size, seed, device
    )
    if args.classify:
        with tempfile.TemporaryDirectory() as tmp:
            folder = model_dir or Path(args.model)
            if run_dir is not None:
                from pipeline.export import export

                folder = export(run_dir, None, Path(tmp) / "hf")
            result["classification"] = classify(
                folder, Path(args.classify[0]), Path(args.classify[1]),
                epochs=args.classify_epochs, lr=args.classify_lr,
                batch_size=args.classify_batch_size, device=device,
            )  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
