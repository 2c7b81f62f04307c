"""How long GLUE takes for a model on this machine: measured step times, extrapolated per task.

    python -m pipeline.tools.bench_glue --model HF_DIR [--steps 10] [--json OUT]

The GLUE data is not needed (nor reachable offline): for each task, fine-tuning steps at batch 32
and evaluation batches of 128 are timed on token sequences of that task's mean length (BERT
WordPiece tokens of its training examples, pairs included) through the fine-tuning path of
``pipeline.evaluate --tasks`` (``AutoModelForSequenceClassification``, AdamW, clipping); the
task's time per seed is then its train size x epochs / 32 steps plus its validation examples.
Real batches are padded to their longest member, so real runs take somewhat longer than these
equal-length batches. Prints one JSON line per task and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from data_prep.atomic import write_json
from data_prep.errors import cli_main
from data_prep.flags import HelpFormatter
from pipeline.evaluation.glue_tasks import TASKS

# name -> (train examples, validation examples, mean tokens per example, [CLS]/[SEP] included)
GLUE_SIZES = {
    "cola": (8_551, 1_043, 11),
    "sst2": (67_349, 872, 13),
    "mrpc": (3_668, 408, 53),
    "qqp": (363_846, 40_430, 30),
    "stsb": (5_749, 1_500, 31),
    "mnli": (392_702, 9_815 + 9_832, 40),
    "qnli": (104_743, 5_463, 51),
    "rte": (2_490, 277, 70),
    "wnli": (635, 71, 38),
}


def _time_task(model_dir: str, name: str, steps: int, device: torch.device) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification

    task = TASKS[name]
    train_n, eval_n, length = GLUE_SIZES[name]
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.num_labels, dtype=torch.float32
    ).to(device)
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)

    def batch(size: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, vocab, (size, length), generator=gen)
        labels = (
            torch.rand(size, generator=gen) * 5
            if task.regression
            else torch.randint(0, task.num_labels, (size,), generator=gen)
        )
        return {"input_ids": ids.to(device), "labels": labels.to(device)}

    model.train()
    timed = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        loss = model(**batch(32)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            timed.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(2):
            model(**{k: v for k, v in batch(128).items() if k != "labels"})
        eval_batch = (time.perf_counter() - start) / 2
    step = sorted(timed)[len(timed) // 2]
    epochs = task.epochs
    train_s = epochs * math.ceil(train_n / 32) * step
    eval_s = math.ceil(eval_n / 128) * eval_batch
    return {
        "task": name, "tokens": length, "train_examples": train_n, "epochs": epochs,
        "ms_per_step": round(1e3 * step, 1), "ms_per_eval_batch": round(1e3 * eval_batch, 1),
        "minutes_per_seed": round((train_s + eval_s) / 60, 1),
    }  # fmt: skip


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.tools.bench_glue",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF folder of the model to time")
    p.add_argument("--steps", type=int, default=10, help="timed fine-tuning steps per task")
    p.add_argument("--tasks", nargs="+", default=list(GLUE_SIZES), help="GLUE tasks to time")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.tasks:
        row = _time_task(args.model, name, args.steps, device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| task | tokens | train | epochs | ms/step (32) | minutes per seed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['tokens']} | {r['train_examples']:,} | {r['epochs']} | "
            f"{r['ms_per_step']} | {r['minutes_per_seed']:,} |"
        )
    total = sum(r["minutes_per_seed"] for r in rows)
    print(f"\nall {len(rows)} tasks: {total:,.0f} minutes per seed on {device.type}")
    if args.json:
        write_json(args.json, {"device": device.type, "rows": rows})


if __name__ == "__main__":
    main()
