"""Evaluate a model as papers report it: GLUE, held-out MLM against its teacher, a classifier.

    python -m pipeline.evaluate --model M --tasks mrpc stsb ... [--seeds N] --json OUT
    python -m pipeline.evaluate --model HF_DIR_OR_RUN_DIR --data DATA_DIR [--teacher TEACHER]
        [--json OUT] [--samples N] [--classify TRAIN.jsonl TEST.jsonl]

``--tasks``: GLUE (:mod:`pipeline.evaluation.glue`), each task a GLUE name (``cola sst2 mrpc
qqp stsb mnli qnli rte wnli``, resolved with ``datasets`` from the hub's ``nyu-mll/glue``, or
its local caches when the machine is offline) or ``NAME=FOLDER`` (local train/validation files in
that task's GLUE columns: jsonl, csv, tsv or parquet), fine-tuned with ``--seeds N`` seeds and
reported as the median with the spread, with GLUE's metric names, in ``--json OUT``, which is also
the resumable state: a rerun skips the finished task x seed pairs. ``--data``: MLM accuracy and
loss on the valid split with the masking contract of training (view 0, the run's seed), so the
numbers are comparable with the trainer's periodic validation; with a teacher, the teacher's
accuracy, top-1 agreement and KL(teacher || model) at T=1 on the same positions.
``--classify`` fine-tunes a sequence classifier on a labelled jsonl (fields ``text`` and
``label``) and reports its test accuracy. Models and teachers are folders or hub IDs
(:mod:`data_prep.hub`), or a RUN_DIR (its newest checkpoint, exported to a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from data_prep.atomic import write_json
from data_prep.errors import cli_main
from data_prep.flags import HelpFormatter
from data_prep.hub import resolve
from pipeline.config.schema import DEFAULT_SEED
from pipeline.evaluation.classify import classify
from pipeline.evaluation.glue import DEFAULT_SEEDS, GLUE_TASKS, format_table, run_glue
from pipeline.evaluation.mlm import mlm_metrics
from pipeline.model.masked_lm import count_parameters
from pipeline.publish.run_model import load_model


def _run_seed(run_dir: Path | None, default: int) -> int:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return default
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return int(cfg.get("train", {}).get("seed", default))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF folder, hub ID or RUN_DIR of pipeline.train")
    p.add_argument(
        "--data",
        nargs="+",
        help="DATA_DIR: held-out MLM metrics on its valid split; several (W:DIR) for a blend's",
    )
    emb = p.add_argument_group("embeddings (students of sentence-embedding teachers)")
    emb.add_argument(
        "--sts",
        nargs="+",
        metavar="FILE",
        help="semantic similarity offline: Spearman (and Pearson) of the cosine of pooled "
        "embeddings against gold scores, per file of sentence1, sentence2, score (or label: "
        "an STS-B validation file as is); jsonl, csv, tsv or parquet",
    )
    emb.add_argument(
        "--mteb",
        nargs="+",
        metavar="TASK",
        help="MTEB tasks by name through the mteb package (pip install mteb; its data needs "
        "the network or its cache)",
    )
    emb.add_argument(
        "--pooling",
        choices=("auto", "mean", "cls"),
        default="auto",
        help="sentence embedding: auto = the sentence-transformers pooling of the model's "
        "folder or of a student's teacher, else mean",
    )
    glue = p.add_argument_group("GLUE")
    glue.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help=f"GLUE tasks: names ({' '.join(GLUE_TASKS)}) or NAME=FOLDER (local files in that "
        "task's columns); needs --json, the resumable results file",
    )
    glue.add_argument(
        "--seeds",
        type=int,
        default=len(DEFAULT_SEEDS),
        help="fine-tuning seeds per task (0..N-1); the median and spread are reported",
    )
    glue.add_argument("--glue-epochs", type=int, help="epochs (default: the task's, 3 or 5)")
    glue.add_argument("--glue-lr", type=float, help="learning rate (default: the task's)")
    glue.add_argument("--glue-batch-size", type=int, help="fine-tuning batch (default: 32)")
    glue.add_argument("--glue-max-len", type=int, help="tokens per example (default: 128)")
    glue.add_argument(
        "--glue-max-train-examples",
        type=int,
        help="fine-tune on a fixed random subset of this many (quick runs; default: all)",
    )
    glue.add_argument(
        "--glue-max-eval-examples",
        type=int,
        help="score a fixed random subset of this many (default: all)",
    )
    p.add_argument("--teacher", help="teacher HF folder or hub ID: adds agreement and KL")
    p.add_argument(
        "--json",
        metavar="FILE",
        help="also write the results (the JSON printed on stdout) to FILE",
    )
    p.add_argument("--samples", type=int, default=4096, help="valid sequences to score")
    p.add_argument(
        "--batch-size", type=int, default=32, help="sequences per forward of the MLM metrics"
    )
    p.add_argument(
        "--seed", type=int, help=f"masking seed (default: the run's, else {DEFAULT_SEED})"
    )
    p.add_argument(
        "--classify",
        nargs=2,
        metavar=("TRAIN", "TEST"),
        help="fine-tune a classifier on TRAIN and report its accuracy on TEST (jsonl files with "
        "fields text and label)",
    )
    p.add_argument("--classify-epochs", type=int, default=3, help="--classify: fine-tuning epochs")
    p.add_argument(
        "--classify-lr",
        type=float,
        default=5e-5,
        help="--classify: learning rate (AdamW, decaying linearly to 0)",
    )
    p.add_argument(
        "--classify-batch-size",
        type=int,
        default=16,
        help="--classify: fine-tuning batch size in sequences",
    )
    return p


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.data or args.tasks or args.sts or args.mteb):
        parser.error(
            "give --tasks (GLUE), --data (held-out MLM), --sts or --mteb: what to evaluate"
        )
    if args.tasks and not args.json:
        parser.error("--tasks needs --json FILE: the results, and the state a rerun resumes from")
    if args.classify and not args.data:
        parser.error("--classify goes with --data")
    from pipeline.distributed.launch import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tasks:
        _glue(args, device)
    if args.sts or args.mteb:
        _embeddings(args, device)
    if not args.data:
        return
    model, run_dir, model_dir = load_model(args.model)
    teacher = None
    if args.teacher:
        from pipeline.model.masked_lm import load_teacher

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
                from pipeline.publish.folder import export

                folder = export(run_dir, None, Path(tmp) / "hf")
            result["classification"] = classify(
                folder, Path(args.classify[0]), Path(args.classify[1]),
                epochs=args.classify_epochs, lr=args.classify_lr,
                batch_size=args.classify_batch_size, device=device,
            )  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:  # one file: GLUE's results and the embeddings' with the MLM metrics beside
        out = Path(args.json)
        earlier = args.tasks or args.sts or args.mteb
        merged = json.loads(out.read_text()) if earlier and out.is_file() else {}
        merged.update({k: v for k, v in result.items() if not (k == "model" and args.tasks)})
        write_json(out, merged)
    sys.stdout.flush()


def _embeddings(args: argparse.Namespace, device: torch.device) -> None:
    """--sts and --mteb: printed, and added to --json under "embeddings"."""
    from pipeline.evaluation.embeddings import mteb_eval, sts_spearman

    with tempfile.TemporaryDirectory() as tmp:
        folder: str | Path = args.model
        if Path(args.model).is_dir() and (Path(args.model) / "checkpoints").is_dir():
            from pipeline.publish.folder import export

            folder = export(Path(args.model), None, Path(tmp) / "hf")
        result: dict[str, Any] = {}
        for path in args.sts or []:
            result[f"sts:{Path(path).name}"] = sts_spearman(
                folder, path, pooling=args.pooling, device=device
            )
        if args.mteb:
            result["mteb"] = mteb_eval(
                folder, args.mteb, Path(tmp) / "mteb", pooling=args.pooling, device=device
            )
    print(json.dumps({"embeddings": result}, indent=1), flush=True)
    if args.json:
        merged = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
        if not args.tasks:  # a file of another earlier call: this call's results only
            merged = {"model": args.model}
        merged["embeddings"] = result
        write_json(args.json, merged)


def _glue(args: argparse.Namespace, device: torch.device) -> None:
    """GLUE on a folder, hub ID or RUN_DIR (exported to a temporary folder first)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder: str | Path = args.model
        if Path(args.model).is_dir() and (Path(args.model) / "checkpoints").is_dir():
            from pipeline.publish.folder import export

            folder = export(Path(args.model), None, Path(tmp) / "hf")
        results = run_glue(
            folder, args.tasks, list(range(args.seeds)), args.json,
            epochs=args.glue_epochs, lr=args.glue_lr, batch_size=args.glue_batch_size,
            max_len=args.glue_max_len, max_train_examples=args.glue_max_train_examples,
            max_eval_examples=args.glue_max_eval_examples, device=device,
        )  # fmt: skip
    print(format_table(results), flush=True)


if __name__ == "__main__":
    main()
